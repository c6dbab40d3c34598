#!/usr/bin/env bash
# Two LBs, one address (issue 16), on real Debian hosts: lb and lb2 share 10.77.0.100 through
# keepalived (provisioned by provision/lb.sh --vip --peer, like `LB_NODES=2 vagrant up`), with
# web1, web2 and a client as systemd-nspawn containers on a private bridge. Under ~100 req/s at
# the VIP it kills nginx on the LB holding it, brings nginx back, moves the VIP on purpose, kills
# that LB as a machine and boots it again, and prints per step how long the VIP took to move and
# how many requests failed (bench/pair.py, which `make bench` runs too). Needs root.
#   lab/pair.sh               the proof, the table, then everything is removed
#   lab/pair.sh --keep        ... and the hosts stay until Enter, to look around
#   lab/pair.sh --rounds 3    the proof three times on the same hosts
set -euo pipefail
cd "$(dirname "$0")/.."
. lab/env.sh

case "${1:-}" in
    -h|--help) sed -n '2,10s/^# \{0,1\}//p' "$0"; exit 0 ;;
esac
[ "$(id -u)" -eq 0 ] || die "lab/pair.sh needs root (containers, network namespaces, cgroups)"
printf '\033[1m== Two LBs, one address: booting lb, web1, web2, lb2, client; provisioning the pair\033[0m\n'
exec "$PYTHON" bench/pair.py "$@"
