#!/bin/sh
# Install the system packages a make target needs, when any is missing: `demo` (the lab on this
# machine; with LAB_HOSTS=1 also its Debian hosts in containers) or `test` (the tests and the
# benchmarks: everything). Debian/Ubuntu only; needs root (or sudo). Idempotent.
set -eu
profile=${1:-test}
need=""
want() { need="$need $1"; }
# the LB and the web nodes: Serf, nginx with the Lua module (the live data plane) and cjson,
# and the stream module (TCP pools)
command -v serf >/dev/null 2>&1 || want serf
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || want nginx
[ -e /usr/lib/nginx/modules/ngx_http_lua_module.so ] || want libnginx-mod-http-lua
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || want libnginx-mod-stream  # TCP pools
dpkg -s lua-cjson >/dev/null 2>&1 || want lua-cjson
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || want python3-venv
hosts() {  # tests/kit/hosts.py: Debian hosts booted in systemd-nspawn containers on a private bridge
    command -v systemd-nspawn >/dev/null 2>&1 || want systemd-container
    command -v debootstrap >/dev/null 2>&1 || want debootstrap
    command -v ip >/dev/null 2>&1 || want iproute2
}
if [ "$profile" = test ]; then
    hosts
    command -v curl >/dev/null 2>&1 || want curl
    # the status page test: a real headless Chromium driven by chromedriver, with a font
    command -v chromium >/dev/null 2>&1 || want chromium
    command -v chromedriver >/dev/null 2>&1 || want chromium-driver
    dpkg -s fonts-dejavu-core >/dev/null 2>&1 || want fonts-dejavu-core
    # `vagrant validate` checks the Vagrantfile; systemd-analyze rates and verifies the units
    command -v vagrant >/dev/null 2>&1 || want vagrant
    command -v systemd-analyze >/dev/null 2>&1 || want systemd
    # keepalived -t checks the LB pair's rendered config
    command -v keepalived >/dev/null 2>&1 || [ -x /usr/sbin/keepalived ] || want keepalived
    # the benchmarks: wrk drives the throughput comparison
    command -v wrk >/dev/null 2>&1 || want wrk
elif [ -n "${LAB_HOSTS:-}" ]; then
    hosts
fi
[ -z "$need" ] && exit 0
echo "lbsync: installing system packages:$need"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086  # one word per package
$sudo apt-get install -y -qq --no-install-recommends $need >/dev/null
