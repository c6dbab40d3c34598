#!/bin/sh
# Provision the load balancer: Debian's serf and nginx, lbsync, and the handlers/ files.
# Usage: lb.sh --name lb --ip 192.168.56.10 --network 192.168.56.0/24 --secrets DIR
#              [--mode hook|run] [--listen PORT|HOST:PORT] [--root DIR] [--src DIR]
set -eu
. "$(dirname "$0")/common.sh"
parse_args "$@"
[ -n "$NETWORK" ] || die "--network (the web nodes' CIDR) is required on the LB"

apt_install serf nginx python3-venv
install_lbsync
run_install --role lb --network "$NETWORK" --mode "$MODE" --listen "$LISTEN"
files_only && exit 0

systemctl daemon-reload
nginx -t -q                      # never (re)start nginx on a config it refuses
systemctl enable -q nginx
systemctl reload-or-restart nginx
ensure_running serf /etc/serf/ /etc/systemd/system/serf.service.d/
if [ "$MODE" = run ]; then
    ensure_running lbsync-run /etc/systemd/system/lbsync-run.service /etc/lbsync/
else
    systemctl disable -q --now lbsync-run 2>/dev/null || true
fi
# One reconcile now, once serf's RPC answers; later ones come from the hook or the daemon.
for _ in 1 2 3 4 5 6 7 8 9 10; do lbsync sync && break; sleep 1; done
serf members -rpc-auth "$(cat "$SECRETS/rpc.token")"
