#!/bin/sh
# Install the system packages lbsync's tests, lab and benchmarks use, when any is missing.
# Debian/Ubuntu only; needs root (or sudo). Idempotent: does nothing when all are present.
set -eu
need=""
command -v serf >/dev/null 2>&1 || need="$need serf"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need="$need nginx"
command -v curl >/dev/null 2>&1 || need="$need curl"
# the live data plane: nginx's Lua module (balancer_by_lua) and cjson; TCP pools: the stream module
[ -e /usr/lib/nginx/modules/ngx_http_lua_module.so ] || need="$need libnginx-mod-http-lua"
dpkg -s lua-cjson >/dev/null 2>&1 || need="$need lua-cjson"
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need="$need libnginx-mod-stream"
# tests/kit/hosts.py: Debian hosts booted in systemd-nspawn containers on a private bridge
command -v systemd-nspawn >/dev/null 2>&1 || need="$need systemd-container"
command -v debootstrap >/dev/null 2>&1 || need="$need debootstrap"
command -v ip >/dev/null 2>&1 || need="$need iproute2"
# the status page test: a real headless Chromium driven by chromedriver, with a font to render
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || need="$need fonts-dejavu-core"
# tests: `vagrant validate` checks the Vagrantfile; systemd-analyze verifies the shipped units
command -v vagrant >/dev/null 2>&1 || need="$need vagrant"
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need="$need python3-venv"
[ -z "$need" ] && exit 0
echo "lbsync: installing system packages:$need"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# policy-rc.d keeps Debian from starting the stock nginx on port 80; lbsync runs its own.
$sudo apt-get install -y -qq --no-install-recommends $need >/dev/null
