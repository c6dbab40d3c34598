#!/usr/bin/env bash
# Boot web node N on $LAB_NET.N: a tiny web server answering "serf-webN", then `lbsync agent`,
# which starts the node's serf agent with role/port/weight tags and joins the LB.
# Booting a running node does nothing. The steps are in lab/labtool.py (boot-web): one process,
# so the node joins as fast as it can.
set -euo pipefail
. "$(dirname "$0")/env.sh"
node_number "${1:-}"
require serf
tool boot-web "$LAB_DIR" "$1"
