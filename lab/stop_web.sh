#!/usr/bin/env bash
# Stop web node N gracefully: the agent tags drain=1, waits until the LB sends no new request,
# leaves the cluster (peers see "left") and exits; then the web server stops.
set -euo pipefail
. "$(dirname "$0")/env.sh"
node_number "${1:-}"
dir=$LAB_DIR/web$1
tool alive "$dir/agent.pid" || tool alive "$dir/web.pid" || { echo "serf-web$1 is not running"; exit 0; }
tool stop "$dir/agent.pid" --timeout 60 --what "serf-web$1 to drain and leave"
tool stop "$dir/serf.pid" --timeout 10
tool stop "$dir/web.pid" --timeout 10
echo "serf-web$1 stopped (drained, then left the cluster)"
