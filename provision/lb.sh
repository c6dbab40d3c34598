#!/bin/sh
# Provision the load balancer: Debian's serf and nginx (with the Lua module: the live data plane),
# lbsync from a wheel, and the handlers/ files.
# Usage: lb.sh --name lb --ip 192.168.56.10 --network 192.168.56.0/24 --secrets DIR
#              [--mode hook|run] [--listen PORT|HOST:PORT] [--join HOST (another LB)]
#              [--wheels DIR | --src DIR] [--root DIR]
set -eu
. "$(dirname "$0")/common.sh"
parse_args "$@"
[ -n "$NETWORK" ] || die "--network (the web nodes' CIDR) is required on the LB"

apt_install serf nginx libnginx-mod-http-lua lua-cjson python3-venv python3-pip
install_lbsync
run_install --role lb --network "$NETWORK" --mode "$MODE" --listen "$LISTEN" ${JOIN:+--join "$JOIN"}
files_only && exit 0

systemctl daemon-reload
nginx -t -q                      # never (re)start nginx on a config it refuses
systemctl enable -q nginx
systemctl reload-or-restart nginx
ensure_running serf /etc/serf/ /etc/systemd/system/serf.service.d/
if [ "$MODE" = run ]; then
    ensure_running lbsync-run /etc/systemd/system/lbsync-run.service /etc/lbsync/ "$VENV/"
else
    systemctl disable -q --now lbsync-run 2>/dev/null || true
fi
# One reconcile now, once serf's RPC answers; later ones come from the hook or the daemon.
for _ in 1 2 3 4 5 6 7 8 9 10; do lbsync sync && break; sleep 1; done
SERF_RPC_AUTH=$(cat "$SECRETS/rpc.token") serf members  # the token never on a command line (ps)
