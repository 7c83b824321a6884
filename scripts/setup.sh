#!/usr/bin/env bash
# Prepare a Debian 12 machine, as root, for flowtrace: the system packages it uses, a
# container engine (the one the machine has: Docker or Podman; Debian's docker.io only
# where there is none), and the project's virtualenv (.venv) with flowtrace installed.
# Safe to run again: each step does only what is missing and says so in one line.
#
#   --for-tests    also Podman (the tests trace both engines) and netsniff-ng (trafgen, their
#                  load generator); scripts/test.sh passes it
#   --decide-only  say which engine would be used and what would be done; change nothing
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SETUP_LOG=/var/log/flowtrace-setup.log
DOCKERD_LOG=/var/log/flowtrace-dockerd.log
DOCKERD_WAIT_S="${FLOWTRACE_DOCKERD_WAIT:-90}"
# gcc, libc6-dev and python3-dev build the C parts (flowtrace.native.MODULES: the capture writer
# flowtrace/capture/_ringpcap.c, the frame decoder flowtrace/correlate/_framedecode.c).
PACKAGES=(busybox-static iproute2 iptables nftables tcpdump tshark libpcap0.8 conntrack procps
    gcc libc6-dev python3-dev)
FOR_TESTS=0
DECIDE_ONLY=0
for arg in "$@"; do
    case "$arg" in
    --for-tests) FOR_TESTS=1 ;;
    --decide-only) DECIDE_ONLY=1 ;;
    *)
        printf 'setup: error: unknown option %s (use --for-tests or --decide-only)\n' "$arg" >&2
        exit 2
        ;;
    esac
done
if [ "$FOR_TESTS" = 1 ]; then
    # trafgen (netsniff-ng): the load generator of the tests that trace under 100k pps;
    # capinfos (wireshark-common, with tshark): checks that a set ends on a whole block
    PACKAGES+=(netsniff-ng)
fi

say() { printf 'setup: %s\n' "$*"; }
die() {
    printf 'setup: error: %s\n' "$*" >&2
    exit 1
}

# Run a noisy command with its output in $SETUP_LOG; show the end of it only on failure.
quietly() {
    if ! "$@" >>"$SETUP_LOG" 2>&1; then
        tail -n 20 "$SETUP_LOG" >&2
        die "'$*' failed (whole log: $SETUP_LOG)"
    fi
}

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" = 0 ]; then
        quietly apt-get update -qq
        APT_UPDATED=1
    fi
    # tshark asks whether non-root users may capture; answer no without a prompt.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    quietly env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# python3 when it is >= 3.11 (pyenv's here, 3.11 on stock Debian 12), else a newer python3.X.
pick_python() {
    local candidate
    for candidate in python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

# shellcheck source=scripts/lib/engine.sh
. "$REPO/scripts/lib/engine.sh"

[ "$(id -u)" = 0 ] || die "run as root: it installs packages and starts the container engine"
command -v apt-get >/dev/null || die "this script is for Debian (apt-get not found)"

if [ "$DECIDE_ONLY" = 1 ]; then
    PYTHON="$(pick_python || command -v python3)"
    decide_engine "$FOR_TESTS"
    say "$ENGINE_LINE"
    for action in "${ACTIONS[@]}"; do
        say "would: $action"
    done
    exit 0
fi
: >>"$SETUP_LOG"

# --- system packages -------------------------------------------------------------------
missing=()
for package in "${PACKAGES[@]}"; do
    is_installed "$package" || missing+=("$package")
done
PYTHON="$(pick_python || true)"
if [ -z "$PYTHON" ]; then
    missing+=(python3)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
    say "packages: installed ${missing[*]}"
else
    say "packages: all present"
fi
PYTHON="${PYTHON:-$(pick_python)}" || die "no python3 >= 3.11 after installing python3"

# --- the container engine ----------------------------------------------------------------
decide_engine "$FOR_TESTS"
say "$ENGINE_LINE"
apply_engine

# --- the virtualenv ----------------------------------------------------------------------
cd "$REPO"
venv_ok() {
    [ -x .venv/bin/python ] &&
        .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}
if ! venv_ok; then
    rm -rf .venv
    if ! "$PYTHON" -m venv .venv >>"$SETUP_LOG" 2>&1; then
        # Debian's python3 needs python3-venv (ensurepip) to make a virtualenv.
        rm -rf .venv
        apt_install python3-venv
        quietly "$PYTHON" -m venv .venv
    fi
fi
# Reinstall only when the project's requirements, its C part or the venv's python changed.
stamp="$({ cat pyproject.toml setup.py $(find flowtrace -name '*.c' | sort); .venv/bin/python -V; } |
    sha256sum | cut -c1-16)"
# Which of flowtrace.native.MODULES (the optional C parts) are built: "built" and "missing" lines.
native_report() {
    .venv/bin/python - <<'PY' 2>/dev/null
import importlib
from flowtrace.native import MODULES
for name in MODULES:
    try:
        importlib.import_module(name)
        print("built", name.rsplit(".", 1)[1])
    except ImportError:
        print("missing", name.rsplit(".", 1)[1])
PY
}
native_ok() {
    ! command -v gcc >/dev/null 2>&1 || ! native_report | grep -q '^missing'
}
if [ "$(cat .venv/.flowtrace-setup 2>/dev/null)" = "$stamp" ] &&
    .venv/bin/python -c 'import flowtrace' 2>/dev/null && [ -x .venv/bin/flowtrace ] && native_ok; then
    say "venv: .venv up to date ($(.venv/bin/python -V))"
else
    quietly .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    echo "$stamp" >.venv/.flowtrace-setup
    say "venv: installed flowtrace and its dev tools into .venv ($(.venv/bin/python -V))"
fi
missing=$(native_report | sed -n 's/^missing //p' | tr '\n' ' ')
if [ -z "$missing" ]; then
    say "native: the C parts are built ($(native_report | sed -n 's/^built //p' | paste -sd, -))"
else
    say "native: not built (no compiler or Python headers): ${missing% }; flowtrace uses their pure-Python paths"
fi
# An editable install leaves flowtrace's own modules uncompiled, and with
# PYTHONDONTWRITEBYTECODE set every run would compile them again (0.1 s of a trace).
quietly .venv/bin/python -m compileall -q flowtrace
