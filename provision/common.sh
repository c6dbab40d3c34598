# shellcheck shell=sh disable=SC2034  # the variables are read by lb.sh and web.sh
# Shared by lb.sh and web.sh (sourced, POSIX sh). Each step is idempotent, so `vagrant provision`
# can run again at any time. With --root DIR only the files are written, under DIR: no apt, no
# venv, no systemctl. That is how the tests check provisioning without VMs or root paths.

ROOT="" NAME="" IP="" JOIN="" NETWORK="" SECRETS="" MODE="hook" PORT="80" LISTEN="80"
SRC=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
VENV=/opt/lbsync

die() { echo "provision: $*" >&2; exit 64; }

parse_args() {
    while [ $# -gt 0 ]; do
        [ $# -ge 2 ] || die "$1 needs a value"
        case "$1" in
            --root) ROOT=$2 ;;
            --name) NAME=$2 ;;
            --ip) IP=$2 ;;
            --join) JOIN=$2 ;;
            --network) NETWORK=$2 ;;
            --secrets) SECRETS=$2 ;;
            --mode) MODE=$2 ;;
            --port) PORT=$2 ;;
            --listen) LISTEN=$2 ;;
            --src) SRC=$2 ;;
            *) die "unknown option $1" ;;
        esac
        shift 2
    done
    if [ -z "$NAME" ] || [ -z "$IP" ] || [ -z "$SECRETS" ]; then
        die "--name, --ip and --secrets are required"
    fi
    CHANGES=$(mktemp)
    trap 'rm -f "$CHANGES"' EXIT
}

# Debian starts a service as soon as its package is installed: serf would gossip unencrypted on
# every interface and nginx would serve its default site. policy-rc.d holds them until our
# config is in place.
apt_install() {
    [ -n "$ROOT" ] && return 0
    missing=""
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"; done
    [ -z "$missing" ] && return 0
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086  # one word per package
    apt-get install -y -qq --no-install-recommends $missing
    rm -f /usr/sbin/policy-rc.d
}

# lbsync in its own venv, editable from the synced source, on PATH where the units expect it.
install_lbsync() {
    if [ -n "$ROOT" ]; then
        export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
        return 0
    fi
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -e "$SRC"
    ln -sf "$VENV/bin/lbsync" /usr/local/bin/lbsync
    PYTHON="$VENV/bin/python"
}

# `lbsync install` prints one line per file it changed; later steps restart only what changed.
run_install() {
    "$PYTHON" -m lbsync.install --node-name "$NAME" --ip "$IP" --secrets "$SECRETS" \
        --handlers "$SRC/handlers" --root "${ROOT:-/}" "$@" > "$CHANGES"
    cat "$CHANGES"
}

changed() { grep -q "^[a-z]* $1" "$CHANGES"; }

# True when the step should stop here because only files were asked for.
files_only() {
    [ -n "$ROOT" ] && echo "provision: --root $ROOT: files written; apt, venv and systemctl skipped"
    [ -n "$ROOT" ]
}

# Restart a unit when its files changed or it is not running; enable it for the next boot.
ensure_running() {
    unit=$1; shift
    systemctl enable -q "$unit"
    restart=no
    for path in "$@"; do changed "$path" && restart=yes; done
    systemctl is-active -q "$unit" || restart=yes
    [ "$restart" = yes ] && systemctl restart "$unit"
    return 0
}
