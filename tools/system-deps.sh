#!/bin/sh
# Install the system packages lbsync's tests, lab and benchmarks use, when any is missing.
# Debian/Ubuntu only; needs root (or sudo). Idempotent: does nothing when all are present.
set -eu
need=""
command -v serf >/dev/null 2>&1 || need="$need serf"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need="$need nginx"
command -v curl >/dev/null 2>&1 || need="$need curl"
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
