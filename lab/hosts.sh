#!/usr/bin/env bash
# The lab on real Debian hosts, for the Vagrant experience without VMs: lb, web1..N and client as
# systemd-nspawn containers (systemd as PID 1, own address on a private bridge, 10.77.0.0/24),
# provisioned with provision/lb.sh and web.sh from a wheel, running the shipped units. Needs root.
#   lab/hosts.sh up               boot and provision (WEB_NODES=3, LAB_MODE=run as for Vagrant)
#   lab/hosts.sh demo             up, then the tour: traffic, drain, a reboot, a crash
#   lab/hosts.sh run lb lbsync status      any command in a host (like `vagrant ssh -c`)
#   lab/hosts.sh shell web1       a shell there
#   lab/hosts.sh kill web2 / start web2    a hard crash, and booting it again
#   lab/hosts.sh status / down    what runs; remove everything (like `vagrant destroy`)
# The first `up` builds the Debian image (about a minute, cached under .cache/hosts).
set -euo pipefail
cd "$(dirname "$0")/.."
. lab/env.sh

hosts() { "$PYTHON" lab/hostlab.py "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# a command in a host, shown as you could type it
in_host() { show lab/hosts.sh run "$@"; hosts run "$@" 2>&1 | sed 's/^/   /'; }
requests() { for _ in $(seq "$1"); do in_host client curl -s http://10.77.0.10/; done; }

demo() {
    step "1. Boot lb, web1, web2 and client, provisioned by provision/*.sh from a wheel"
    show lab/hosts.sh up
    hosts up
    step "2. Through the LB (10.77.0.10), from the client host"
    requests 4
    step "3. What Serf knows, and what nginx serves"
    in_host lb lbsync status
    step "4. web2 drains: systemctl stop lbsync-agent sets drain=1, waits for the LB to let go, leaves"
    in_host web2 systemctl stop lbsync-agent
    hosts wait-served web2 --gone --timeout 10
    requests 3
    in_host web2 systemctl start lbsync-agent
    hosts wait-served web2 --timeout 30
    step "5. web1 reboots: it drains on the way down and is back in the pool after boot"
    in_host web1 systemctl reboot
    hosts wait-served web1 --gone --timeout 30
    hosts wait-served web1 --timeout 60
    requests 4
    step "6. web2 crashes (SIGKILL of its PID 1): Serf says failed, the LB drops it"
    show lab/hosts.sh kill web2
    hosts kill web2
    hosts wait-served web2 --gone --timeout 30
    in_host lb lbsync status
    show lab/hosts.sh start web2
    hosts start web2
    hosts wait-served web2 --timeout 60
    printf '\n== The hosts keep running. Try:\n'
    printf '   %-44s # %s\n' "lab/hosts.sh run client curl -s http://10.77.0.10/" "which web host answers" \
        "lab/hosts.sh shell lb" "look around: journalctl -u serf, /etc/lbsync" \
        "lab/hosts.sh run lb systemctl reboot" "the LB comes back serving its pool" \
        "lab/hosts.sh down" "remove every host"
}

[ "$(id -u)" -eq 0 ] || die "lab/hosts.sh needs root (containers, network namespaces, cgroups)"
case "${1:-}" in
    demo) demo ;;
    ""|-h|--help) sed -n '2,11s/^# \{0,1\}//p' "$0" ;;
    *) exec "$PYTHON" lab/hostlab.py "$@" ;;
esac
