#!/usr/bin/env bash
# Prepare a Debian 12 machine, as root, for flowtrace: the system packages it uses, a
# running Docker engine, and the project's virtualenv (.venv) with flowtrace installed.
# Safe to run again: each step does only what is missing and says so in one line.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SETUP_LOG=/var/log/flowtrace-setup.log
DOCKERD_LOG=/var/log/flowtrace-dockerd.log
DOCKER_SOCKET=/var/run/docker.sock
DOCKERD_WAIT_S="${FLOWTRACE_DOCKERD_WAIT:-90}"
PACKAGES=(docker.io busybox-static iproute2 iptables tcpdump tshark libpcap0.8 conntrack procps)

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

# The engine answers GET /_ping on its socket (no docker CLI: the one on PATH may not match).
docker_answers() {
    "$PYTHON" - "$DOCKER_SOCKET" <<'EOF' 2>/dev/null
import socket, sys
with socket.socket(socket.AF_UNIX) as s:
    s.settimeout(3)
    s.connect(sys.argv[1])
    s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
    reply = s.recv(4096)
sys.exit(0 if reply.startswith(b"HTTP/1.") and reply.rstrip().endswith(b"OK") else 1)
EOF
}

# shellcheck source=scripts/lib/engine_ipv6.sh
. "$REPO/scripts/lib/engine_ipv6.sh"

[ "$(id -u)" = 0 ] || die "run as root: it installs packages and starts dockerd"
command -v apt-get >/dev/null || die "this script is for Debian (apt-get not found)"
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
    if [[ " ${missing[*]} " == *" docker.io "* ]]; then
        record_engine_installed docker.io
        ENGINE_INSTALLED_NOW=1
    fi
else
    say "packages: all present"
fi
PYTHON="${PYTHON:-$(pick_python)}" || die "no python3 >= 3.11 after installing python3"

# --- the Docker engine -----------------------------------------------------------------
if docker_answers; then
    adopt_engine
fi
write_ipv6_options
if [ "$ENGINE_OPTIONS_WRITTEN" = 1 ] && docker_answers; then
    if [ "${ENGINE_INSTALLED_NOW:-0}" = 1 ]; then
        stop_dockerd_by_hand # just installed: nothing runs on it yet
    else
        say "dockerd: the new options apply when dockerd restarts, which stops every container on it: restart it when nothing uses the engine"
    fi
fi
if docker_answers; then
    say "dockerd: answering"
else
    # The engine's own pid file, not `pgrep dockerd`: other dockerds (private engines
    # with pid files of their own) may run on the machine.
    if [ -n "$(dockerd_pid)" ]; then
        how="already starting"
    else
        # A dockerd that was killed leaves its pid file, and a new one refuses to start.
        rm -f "$DOCKERD_PIDFILE"
        start_dockerd_detached
        how="started"
    fi
    deadline=$((SECONDS + DOCKERD_WAIT_S))
    until docker_answers; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 5 "$DOCKERD_LOG" >&2 || true
            die "dockerd did not answer on $DOCKER_SOCKET within ${DOCKERD_WAIT_S} s (log: $DOCKERD_LOG)"
        fi
        sleep 0.5
    done
    say "dockerd: $how, answering (log: $DOCKERD_LOG)"
fi

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
# Reinstall only when the project's requirements or the venv's python changed.
stamp="$({ cat pyproject.toml; .venv/bin/python -V; } | sha256sum | cut -c1-16)"
if [ "$(cat .venv/.flowtrace-setup 2>/dev/null)" = "$stamp" ] &&
    .venv/bin/python -c 'import flowtrace' 2>/dev/null && [ -x .venv/bin/flowtrace ]; then
    say "venv: .venv up to date ($(.venv/bin/python -V))"
else
    quietly .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    echo "$stamp" >.venv/.flowtrace-setup
    say "venv: installed flowtrace and its dev tools into .venv ($(.venv/bin/python -V))"
fi
