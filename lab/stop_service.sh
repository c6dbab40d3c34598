#!/usr/bin/env bash
# Stop node N of a kind:
#   api N, cache N, web N   gracefully, as lab/stop_web.sh: the agent tags drain=1, waits until
#                           the LB sends nothing new, leaves the cluster and exits; then its service
#   static N                `lbsync member remove web static-webN` (shown), then its web server
set -euo pipefail
. "$(dirname "$0")/env.sh"
kind=${1:-}
case "$kind" in
    web|api|cache|static) ;;
    *) die "usage: $(basename "$0") web|api|cache|static N" ;;
esac
node_number "${2:-}" "$kind"
dir=$LAB_DIR/$kind$2
if [ "$kind" = static ]; then
    name=static-web$2
    [ -d "$dir" ] || { echo "$name is not running"; exit 0; }
    tool unmember "$LAB_DIR" static "$2" || echo "lab: $name's web server stops anyway" >&2
    tool alive "$dir/web.pid" || { echo "$name's web server is not running"; exit 0; }
    tool stop "$dir/web.pid" --timeout 10
    echo "$name stopped (out of the web pool)"
    exit 0
fi
name=serf-$kind$2
tool alive "$dir/agent.pid" || tool alive "$dir/web.pid" || tool alive "$dir/echo.pid" ||
    { echo "$name is not running"; exit 0; }
tool stop "$dir/agent.pid" --timeout 60 --what "$name to drain and leave"
tool stop "$dir/serf.pid" --timeout 10
tool stop "$dir/web.pid" --timeout 10
tool stop "$dir/echo.pid" --timeout 10
echo "$name stopped (drained, then left the cluster)"
