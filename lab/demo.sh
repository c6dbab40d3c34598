#!/usr/bin/env bash
# The lbsync tour on one machine: a load balancer (nginx + Serf + lbsync) and web nodes on
# loopback addresses. Boots web1..web3 one by one, shows who answers through the LB, what Serf
# knows and what nginx serves, then drains web2 away. Leaves the lab running. Safe to re-run.
# With nginx's Lua module (installed by `make demo`) membership changes are pushed into nginx's
# balancer: no reload, no lost request. Without it (LBSYNC_DATA_PLANE=reload) each change is a
# checked render + reload.
set -euo pipefail
cd "$(dirname "$0")/.."
# LAB_HOSTS=1: the same tour on real Debian hosts (systemd-nspawn containers, root): lab/hosts.sh
[ -z "${LAB_HOSTS:-}" ] || exec lab/hosts.sh demo
. lab/env.sh
require serf nginx

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
members() {
    # the token travels in the environment (SERF_RPC_AUTH), never on a command line ps can show
    echo "\$ SERF_RPC_AUTH=\$($PYTHON lab/labtool.py token $LAB_DIR) serf members -rpc-addr $LB_IP:$LB_RPC_PORT"
    SERF_RPC_AUTH="$(tool token "$LAB_DIR")" serf members -rpc-addr "$LB_IP:$LB_RPC_PORT" | sed 's/^/   /'
}
# The console script by its full path (make demo's venv is not on the reader's PATH).
LBSYNC=$(command -v lbsync 2>/dev/null) || LBSYNC="PYTHONPATH=$REPO $PYTHON -m lbsync"
status() {
    echo "\$ $LBSYNC -c $LAB_DIR/lb/lbsync.toml status"
    "$PYTHON" -m lbsync -c "$LAB_DIR/lb/lbsync.toml" status 2>&1 | grep -v '^\(daemon\|autoscale\):' | sed 's/^/   /'
}

if [ "$LAB_MODE" = run ]; then follower="the lbsync run daemon"; else follower="lbsync as its event handler"; fi
step "1. The load balancer: nginx, a Serf agent, and $follower"
show lab/up.sh
lab/up.sh
. "$LAB_DIR/lab.env"  # the ports up.sh settled on
tool requests "$LB_IP" "$HTTP_PORT" 1  # nobody home yet: the web pool's own 503 page

if [ -n "${LAB_AUTOSCALE:-}" ]; then
    step "2-4. Autoscale on (min 2, max 4): lbsync autoscale boots the pool itself, then grows it"
    for n in 1 2 3 4; do mkdir -p "$LAB_DIR/web$n"; echo 0.50 > "$LAB_DIR/web$n/load"; done  # in band: hold
    AUTOSCALE=("$PYTHON" -m lbsync -c "$LAB_DIR/lb/lbsync.toml"
        --set autoscale.min_size=2 --set autoscale.max_size=4 --set autoscale.interval=2
        --set autoscale.sustain=3 --set autoscale.cooldown_out=10 --set autoscale.cooldown_in=60
        --set autoscale.warmup=15 --set "autoscale.name_template=serf-web{index}"
        --set "autoscale.scale_out_command=$REPO/lab/boot_web.sh {index}"
        --set "autoscale.scale_in_command=$REPO/lab/stop_web.sh {index}" autoscale)
    show "${AUTOSCALE[@]}"
    tool alive "$LAB_DIR/lb/autoscale.pid" ||
        tool spawn "$LAB_DIR/lb/autoscale.pid" "$LAB_DIR/lb/autoscale.log" -- "${AUTOSCALE[@]}"
    tool wait-served "$LB_IP" "$HTTP_PORT" serf-web2 --timeout 60
    # step 6 stops web2 by hand: first grow to 3 (load 0.95 > 0.80), so the pool stays at min_size
    for n in 1 2; do echo 0.95 > "$LAB_DIR/web$n/load"; done
    tool wait-served "$LB_IP" "$HTTP_PORT" serf-web3 --timeout 90
    for n in 1 2 3 4; do echo 0.50 > "$LAB_DIR/web$n/load"; done
    tool requests "$LB_IP" "$HTTP_PORT" 4
    echo "   load: echo 0.95 > $LAB_DIR/webN/load scales out; echo 0.05 scales back in"
    echo "   decisions: tail -f $LAB_DIR/lb/autoscale.log"
else
    for n in 1 2 3; do
        step "$((n + 1)). Boot web node $n (serf-web$n on $LAB_NET.$n)"
        show lab/boot_web.sh "$n"
        lab/boot_web.sh "$n"
        tool wait-served "$LB_IP" "$HTTP_PORT" "serf-web$n" --timeout 30
        tool requests "$LB_IP" "$HTTP_PORT" "$((n * 2))"
    done
fi

step "5. What Serf knows, and what nginx serves from it"
members
status

step "6. web2 leaves gracefully: drain=1, the LB stops sending, then it leaves"
show lab/stop_web.sh 2
lab/stop_web.sh 2
tool wait-served "$LB_IP" "$HTTP_PORT" serf-web2 --gone --timeout 30
tool requests "$LB_IP" "$HTTP_PORT" 4
members
status

next() { printf '   %-58s # %s\n' "$1" "$2"; }
printf '\n== The lab is still running (state and logs in %s). Try:\n' "$LAB_DIR"
next "curl -s http://$LB_IP:$HTTP_PORT/" "which node answers"
next "lab/boot_web.sh 4" "one more node joins the pool"
next "lab/boot_web.sh 2" "web2 comes back"
next "lab/stop_web.sh 2" "a graceful drain, then leave"
next "lab/kill_web.sh 3" "a hard crash: Serf says failed, the LB drops it"
next "$LBSYNC -c $LAB_DIR/lb/lbsync.toml status" "what the LB renders, what nginx serves, and why"
next "lab/boot_service.sh api 1; curl -s http://$LB_IP:$API_PORT/" "an API node: the api pool answers serf-api1"
next "lab/boot_service.sh cache 1; ${PYTHON#"$REPO"/} lab/labtool.py echo $LB_IP $TCP_PORT hello" \
    "a cache node: a line through the TCP pool"
next "lab/static_web.sh 1" "static-web1: a web pool member with no Serf agent"
next "$LBSYNC -c $LAB_DIR/lb/lbsync.toml member list" "static members (lab/stop_service.sh static 1 removes it)"
next "lab/down.sh" "stop everything (state and logs stay)"
[ "$LAB_MODE" != run ] || next "http://$LB_IP:$STATUS_PORT/" "the status page (and /metrics) of lbsync run"
next "LAB_MODE=hook lab/up.sh" "after down.sh: the LB with lbsync as Serf's event handler"
