#!/bin/sh
# Provision a web node: nginx serving a page that names the node, Debian's serf, the lbsync agent
# (from a wheel).
# Usage: web.sh --name web1 --ip 192.168.56.11 --join 192.168.56.10 --secrets DIR
#               [--port 80] [--wheels DIR | --src DIR] [--root DIR]
set -eu
. "$(dirname "$0")/common.sh"
parse_args "$@"
[ -n "$JOIN" ] || die "--join (the LB address) is required on a web node"

apt_install serf nginx python3-venv python3-pip
install_lbsync
run_install --role web --join "$JOIN" --port "$PORT"
# The application: Debian's default site, answering with this node's name.
mkdir -p "$ROOT/var/www/html"
printf '%s\n' "$NAME" > "$ROOT/var/www/html/index.html"
files_only && exit 0

systemctl daemon-reload
ensure_running nginx
ensure_running serf /etc/serf/ /etc/systemd/system/serf.service.d/
ensure_running lbsync-agent /etc/systemd/system/lbsync-agent.service /etc/lbsync/ "$VENV/"
