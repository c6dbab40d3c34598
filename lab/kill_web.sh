#!/usr/bin/env bash
# Kill web node N hard (SIGKILL to its serf agent, lbsync agent and web server): no drain, no
# leave. The other members notice within seconds and Serf reports it "failed".
set -euo pipefail
. "$(dirname "$0")/env.sh"
node_number "${1:-}"
dir=$LAB_DIR/web$1
for part in serf agent web; do
    tool stop "$dir/$part.pid" --signal KILL --timeout 5
done
echo "serf-web$1 killed (SIGKILL): watch it turn 'failed' in serf members"
