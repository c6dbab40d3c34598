# shellcheck shell=bash
# Sourced by the lab scripts: where the lab lives and which addresses and ports it uses.
# Every value can be set in the environment; up.sh saves the LB's ports in $LAB_DIR/lab.env so
# later scripts (boot_web.sh, demo.sh, down.sh) agree with the running lab.
# Nodes on $LAB_NET (lab/labtool.py KINDS): web node N (1..99) on .N; api node N (1..49) on
# .(100+N), cache node N on .(150+N), static web server N on .(200+N).

LAB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$LAB_ROOT")
LAB_DIR=${LAB_DIR:-$LAB_ROOT/state}
if [ -f "$LAB_DIR/lab.env" ]; then  # the running lab's ports, unless set explicitly
    while IFS='=' read -r key value; do
        [ -n "$key" ] && [ -z "${!key:-}" ] && printf -v "$key" '%s' "$value"
    done < "$LAB_DIR/lab.env"
fi

: "${LAB_NET:=127.0.1}"          # web node N runs on $LAB_NET.N
: "${LB_IP:=127.0.0.1}"          # the load balancer: nginx and its serf agent
: "${LB_SERF_PORT:=7946}"        # Serf gossip (TCP+UDP); taken -> up.sh picks a free one
: "${LB_RPC_PORT:=7373}"         # Serf RPC, for lbsync and `serf members`
: "${HTTP_PORT:=8080}"           # nginx: the web pool, http://$LB_IP:$HTTP_PORT/
: "${API_PORT:=8081}"            # nginx: the api pool, http://$LB_IP:$API_PORT/
: "${TCP_PORT:=6380}"            # nginx: the cache pool (TCP), $LB_IP:$TCP_PORT
: "${STATUS_PORT:=9180}"         # `lbsync run`'s status page and /metrics (LAB_MODE=run)
: "${WEB_PORT:=8000}"            # each web (and api, static) node's web server, on its own address
: "${CACHE_PORT:=6379}"          # each cache node's echo service (lab/echoserver.py), on its own address
: "${WEB_SERF_PORT:=7946}"
: "${WEB_RPC_PORT:=7373}"
: "${LAB_MODE:=run}"             # run: the `lbsync run` daemon; hook: `lbsync handle` as serf's handler
if [ -z "${PYTHON:-}" ]; then  # the checkout's venv (make demo makes it), else python3
    PYTHON=python3
    [ -x "$REPO/.venv/bin/python" ] && PYTHON=$REPO/.venv/bin/python
fi
export LAB_DIR LAB_NET LB_IP LB_SERF_PORT LB_RPC_PORT HTTP_PORT API_PORT TCP_PORT WEB_PORT CACHE_PORT
export WEB_SERF_PORT WEB_RPC_PORT STATUS_PORT
export LAB_MODE PYTHON
# lbsync importable from the checkout, and the test kit (tests/kit: the nginx layout the tests use)
export PYTHONPATH="$REPO:$REPO/tests${PYTHONPATH:+:$PYTHONPATH}"

tool() {  # status 69: $PYTHON cannot run the lab at all; stop here whatever the caller tests
    local status=0
    "$PYTHON" "$LAB_ROOT/labtool.py" "$@" || status=$?
    [ "$status" -ne 69 ] || exit 69
    return "$status"
}
die() { echo "lab: $*" >&2; exit 1; }
show() { printf '$'; printf ' %q' "$@"; printf '\n'; }  # a command as you could paste it

require() {
    for binary in "$@"; do
        command -v "$binary" >/dev/null 2>&1 || [ -x "/usr/sbin/$binary" ] ||
            die "$binary is not installed: run 'make demo' (it installs serf and nginx) or apt-get install $binary"
    done
    [ -x /usr/sbin/nginx ] && PATH="$PATH:/usr/sbin"
    return 0  # labtool.py says so itself when $PYTHON lacks lbsync's dependencies
}

node_number() {  # node_number N [KIND]: N is a node number of KIND (default web), or stop here
    local kind=${2:-web} max=49
    [ "$kind" = web ] && max=99
    case "${1:-}" in
        ''|*[!0-9]*) die "usage: $(basename "$0") ${2:+$kind }N   (N = 1..$max, the $kind node's number)" ;;
    esac
    [ "$1" -ge 1 ] && [ "$1" -le "$max" ] || die "N must be 1..$max for a $kind node, not $1"
}
