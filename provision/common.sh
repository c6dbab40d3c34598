# shellcheck shell=sh disable=SC2034  # the variables are read by lb.sh and web.sh
# Shared by lb.sh and web.sh (sourced, POSIX sh). Each step is idempotent, so `vagrant provision`
# can run again at any time. With --root DIR only the files are written, under DIR: no apt, no
# venv, no systemctl. That is how the tests check provisioning without VMs or root paths.

ROOT="" NAME="" IP="" JOIN="" NETWORK="" SECRETS="" MODE="hook" PORT="80" LISTEN="80" WHEELS=""
VIP="" PEERS="" PRIORITY="" VIP_IF=""  # an LB pair (lb.sh): floating address, other LB(s), VRRP priority
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
            --wheels) WHEELS=$2 ;;
            --vip) VIP=$2 ;;
            --peer) PEERS="$PEERS --peer $2" ;;
            --priority) PRIORITY=$2 ;;
            --vip-interface) VIP_IF=$2 ;;
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

# lbsync from a built wheel in its own venv (/opt/lbsync), on PATH where the units expect it. The
# venv holds lbsync and its dependencies only: Debian's pip (python3-pip) installs into it with
# --python, the same pip on every host, updated by apt (and a venv made without pip is made in a
# tenth of the time). Inspect it with: python3 -m pip --python /opt/lbsync/bin/python list
# --wheels DIR: a wheelhouse (lbsync's wheel and its dependencies' wheels); pip then uses nothing
# else, for hosts with no route out. Without it the wheel is built here from --src, and the
# dependencies come from the package index (a Vagrant VM has one). A wheel is installed only when
# it differs from the last one (its sha256 is kept in the venv): the run then reports
# "updated /opt/lbsync/", and the services running lbsync are restarted.
install_lbsync() {
    if [ -n "$ROOT" ]; then
        export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
        return 0
    fi
    PYTHON="$VENV/bin/python"
    [ -x "$PYTHON" ] || python3 -m venv --without-pip "$VENV"
    built=""
    if [ -n "$WHEELS" ]; then
        set -- "$WHEELS"/lbsync-*.whl
        [ $# -eq 1 ] && [ -f "$1" ] || die "--wheels $WHEELS: expected exactly one lbsync-*.whl there"
        wheel=$1
        set -- --no-index --find-links "$WHEELS"
    else  # from a copy of the source, so the build leaves nothing in it (build/, *.egg-info)
        built=$(mktemp -d)
        mkdir "$built/src"
        cp -r "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/LICENSE" "$SRC/lbsync" "$built/src/"
        SOURCE_DATE_EPOCH=315532800 debian_pip wheel --no-deps -w "$built" "$built/src"  # same source, same bytes
        wheel=$(ls "$built"/lbsync-*.whl)
        set --
    fi
    sum=$(sha256sum "$wheel" | cut -d' ' -f1)
    if [ "$(cat "$VENV/.lbsync-wheel" 2>/dev/null)" != "$sum" ] || ! [ -x "$VENV/bin/lbsync" ]; then
        if [ -x "$VENV/bin/lbsync" ]; then  # a rebuilt wheel keeps its version: reinstall lbsync
            debian_pip --python "$PYTHON" install "$@" --force-reinstall --no-deps "$wheel"
        fi
        debian_pip --python "$PYTHON" install "$@" "$wheel"  # and whatever dependency is missing
        echo "$sum" > "$VENV/.lbsync-wheel"
        echo "updated $VENV/ ($(basename "$wheel"))" >> "$CHANGES"
    fi
    [ -z "$built" ] || rm -rf "$built"
    ln -sf "$VENV/bin/lbsync" /usr/local/bin/lbsync
}

debian_pip() { python3 -m pip -q --disable-pip-version-check "$@"; }

# `lbsync install` prints one line per file it changed; later steps restart only what changed.
run_install() {
    "$PYTHON" -m lbsync.install --node-name "$NAME" --ip "$IP" --secrets "$SECRETS" \
        --root "${ROOT:-/}" "$@" >> "$CHANGES"
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
