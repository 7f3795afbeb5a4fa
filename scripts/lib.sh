# Shared helpers for the set-up scripts (sourced, not run): logging, root, apt, the venv.
# shellcheck shell=bash

set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${STRATUM1_VENV:-$REPO_DIR/.venv}"
# Reference daemons unpacked from .debs (chrony conflicts with ntpsec as a package).
REF_DIR="${STRATUM1_REF_DIR:-/opt/stratum1-ref}"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[stratum1] %s\n' "$*" >&2; }
die() { printf '[stratum1] ERROR: %s\n' "$*" >&2; exit 1; }

# Run a command as root: directly when we are root (CI), through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo --preserve-env=DEBIAN_FRONTEND "$@"
    else
        die "need root for: $* (run as root or install sudo)"
    fi
}

# Debian packages from the arguments that are not installed yet.
missing_debs() {
    local pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            printf '%s\n' "$pkg"
        fi
    done
}

_APT_UPDATED=0
apt_update_once() {
    if [ "$_APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        as_root apt-get -qq update
        _APT_UPDATED=1
    fi
}

# Install Debian packages that are missing, with packaged services kept from starting:
# no packaged daemon may ever discipline this machine's clock.
apt_install() {
    command -v dpkg-query >/dev/null 2>&1 || die "this script needs a Debian-based system (dpkg, apt-get)"
    local missing
    missing="$(missing_debs "$@")"
    [ -z "$missing" ] && return 0
    apt_update_once
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        made_policy=1
    fi
    log "apt-get install $(echo "$missing" | tr '\n' ' ')"
    local rc=0 aptlog
    aptlog="$(mktemp)"
    # dpkg's chatter goes to a file that is shown only when something fails.
    # shellcheck disable=SC2086
    as_root apt-get -qq -o=Dpkg::Use-Pty=0 install -y --no-install-recommends $missing \
        >"$aptlog" 2>&1 || rc=$?
    if [ "$made_policy" -eq 1 ]; then
        as_root rm -f "$policy"
    fi
    if [ "$rc" -ne 0 ]; then
        cat "$aptlog" >&2
        rm -f "$aptlog"
        die "apt-get install failed (exit $rc) for: $missing"
    fi
    rm -f "$aptlog"
}

# The Python the venv is made from: $PYTHON, else python3 on PATH; must be 3.11 or newer.
pick_python() {
    local py="${PYTHON:-python3}"
    command -v "$py" >/dev/null 2>&1 || die "no $py on PATH (install python3 >= 3.11)"
    "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
        || die "$py is $("$py" -V 2>&1); stratum1 needs Python 3.11 or newer"
    printf '%s\n' "$py"
}

# System packages the venv needs: venv/ensurepip for Debian's python3, and a compiler and
# headers for wheels that must be built on the spot (gpiod on 32-bit Raspberry Pi OS).
install_base_debs() {
    apt_install python3 python3-venv python3-dev gcc libc6-dev libudev1
}

# Create (or reuse) the venv and install the project editable with its test extra.
ensure_venv() {
    local py
    py="$(pick_python)"
    if [ -x "$VENV_DIR/bin/python" ] && ! "$VENV_DIR/bin/python" -c 'import sys' >/dev/null 2>&1; then
        log "removing broken venv $VENV_DIR"
        rm -rf "$VENV_DIR"
    fi
    if [ ! -x "$VENV_DIR/bin/python" ]; then
        log "creating venv $VENV_DIR with $("$py" -V 2>&1)"
        "$py" -m venv "$VENV_DIR" || die "python -m venv failed (on Debian: apt-get install python3-venv)"
    fi
    log "pip install -e '.[test]'"
    "$VENV_DIR/bin/python" -m pip install -qq --disable-pip-version-check -e "$REPO_DIR[test]" \
        || die "pip install of the project failed"
}
