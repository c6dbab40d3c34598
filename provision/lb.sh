#!/bin/sh
# Provision the load balancer: Debian's serf and nginx (with the Lua module: the live data plane),
# lbsync from a wheel, and the handlers/ files.
# Usage: lb.sh --name lb --ip 192.168.56.10 --network 192.168.56.0/24 --secrets DIR
#              [--mode hook|run] [--listen PORT|HOST:PORT] [--join HOST (another LB)]
#              [--vip ADDR/PREFIX --peer ADDR [--priority N] [--vip-interface IF]] (an LB pair:
#               keepalived moves the VIP; the interface defaults to the one holding --ip)
#              [--wheels DIR | --src DIR] [--root DIR]
set -eu
. "$(dirname "$0")/common.sh"
parse_args "$@"
[ -n "$NETWORK" ] || die "--network (the web nodes' CIDR) is required on the LB"
[ -z "$PEERS$PRIORITY$VIP_IF" ] || [ -n "$VIP" ] || die "--peer, --priority, --vip-interface are for an LB pair: add --vip"

apt_install serf nginx libnginx-mod-http-lua lua-cjson python3-venv python3-pip
[ -z "$VIP" ] || apt_install keepalived curl
install_lbsync
# shellcheck disable=SC2086  # $PEERS is "--peer A --peer B"
run_install --role lb --network "$NETWORK" --mode "$MODE" --listen "$LISTEN" ${JOIN:+--join "$JOIN"} \
    ${VIP:+--vip "$VIP"} $PEERS ${PRIORITY:+--priority "$PRIORITY"} ${VIP_IF:+--vip-interface "$VIP_IF"}
files_only && exit 0

systemctl daemon-reload
systemd-tmpfiles --create /etc/tmpfiles.d/lbsync.conf  # /run/lbsync: nginx binds its sockets there
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
# An LB pair: keepalived last, so its first checks find nginx serving the pool. It starts as
# BACKUP (nopreempt): a running peer keeps the VIP. Without --vip, a keepalived we set up stops.
if [ -n "$VIP" ]; then
    ensure_running keepalived /etc/keepalived/ /etc/systemd/system/keepalived.service.d/
elif changed /etc/keepalived/keepalived.conf; then
    systemctl disable -q --now keepalived
fi
SERF_RPC_AUTH=$(cat "$SECRETS/rpc.token") serf members  # the token never on a command line (ps)
