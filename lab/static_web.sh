#!/usr/bin/env bash
# A static member of the web pool: a web server answering "static-webN" on $LAB_NET.(200+N) with
# no Serf agent, added by `lbsync member add web static-webN ADDR:PORT` (the command is shown).
# `lbsync member list` lists it; lab/stop_service.sh static N removes it and stops the server.
# Safe to re-run.
set -euo pipefail
. "$(dirname "$0")/env.sh"
node_number "${1:-}" static
tool boot "$LAB_DIR" static "$1"
