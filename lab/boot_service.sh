#!/usr/bin/env bash
# Boot node N of another service than the web pool's, as a web node boots (lab/boot_web.sh):
#   api N     serf-apiN on $LAB_NET.(100+N): a web server answering "serf-apiN", then
#             `lbsync agent` with services = ["api:$WEB_PORT"]; the LB's api pool follows it
#   cache N   serf-cacheN on $LAB_NET.(150+N): lab/echoserver.py named cache-N, then
#             `lbsync agent` with services = ["cache:$CACHE_PORT"]; the LB's TCP pool follows it
# Booting a running node does nothing; lab/stop_service.sh KIND N stops it.
set -euo pipefail
. "$(dirname "$0")/env.sh"
case "${1:-}" in
    api|cache) ;;
    *) die "usage: $(basename "$0") api|cache N" ;;
esac
node_number "${2:-}" "$1"
require serf
tool boot "$LAB_DIR" "$1" "$2"
