#!/usr/bin/env bash
# Boot web node N on $LAB_NET.N: a tiny web server answering "serf-webN", then `lbsync agent`,
# which starts the node's serf agent with role/port/weight tags and joins the LB.
# Booting a running node does nothing. The steps are in lab/labtool.py (boot): one process,
# so the node joins as fast as it can. lab/boot_service.sh boots api and cache nodes likewise.
set -euo pipefail
. "$(dirname "$0")/env.sh"
node_number "${1:-}"
require serf
tool boot "$LAB_DIR" web "$1"
