#!/usr/bin/env bash
# Stop the whole lab by PID: static members (out of the web pool while the LB still runs), the
# LB (lbsync daemon, serf, nginx), then every web, api and cache node.
# State and logs stay in $LAB_DIR; lab/up.sh starts again from them.
set -uo pipefail
. "$(dirname "$0")/env.sh"
[ -d "$LAB_DIR" ] || { echo "no lab in $LAB_DIR"; exit 0; }
tool stop "$LAB_DIR/lb/autoscale.pid" --timeout 150  # first: it must not boot replacements
for dir in "$LAB_DIR"/static*/; do
    [ -d "$dir" ] || continue
    n=${dir%/}
    "$LAB_ROOT/stop_service.sh" static "${n##*/static}"
done
tool stop "$LAB_DIR/lb/daemon.pid" --timeout 10
tool stop "$LAB_DIR/lb/serf.pid" --timeout 10
tool stop "$LAB_DIR/nginx/nginx.pid" --signal QUIT --timeout 10  # graceful: finish requests
for dir in "$LAB_DIR"/web*/ "$LAB_DIR"/api*/ "$LAB_DIR"/cache*/; do
    [ -d "$dir" ] || continue
    for part in serf agent web echo; do  # serf first: the agent then exits without a drain
        tool stop "$dir/$part.pid" --timeout 10
    done
done
left=$(tool pids "$LAB_DIR")
[ -z "$left" ] || { echo "lab: still running:" >&2; echo "$left" >&2; exit 1; }
echo "lab down (state and logs kept in $LAB_DIR)"
