# IPv6 NAT on a Docker engine flowtrace set up itself: the daemon options, and the
# marker that says the engine is flowtrace's to configure.
#
# Sourced by setup.sh.  Docker 20.10 (Debian's docker.io) NATs IPv6 on user networks
# (MASQUERADE for a network's subnet, DNAT for ports published on [::]) only with the
# daemon options "ip6tables": true and "experimental": true (Docker 27 has them on by
# default).  flowtrace sets them only on an engine it installed and started itself,
# never on an engine the machine had:
#
# * $ENGINE_MARKER records that setup.sh installed the engine (record_engine_installed,
#   right after it installs docker.io).
# * A machine set up by a flowtrace from before the marker is adopted (adopt_engine) only
#   when every one of these holds: flowtrace's own set-up log shows the install of
#   docker.io ("Setting up docker.io" in $SETUP_LOG, which only setup.sh writes); the
#   running dockerd is the one setup.sh starts, a bare `dockerd` whose stdout and
#   stderr are $DOCKERD_LOG; PID 1 is not systemd (no unit can be running it); and there
#   is no $DAEMON_JSON (nobody configured the engine).
# * The options go into $DAEMON_JSON only when there is none, or when it is still the
#   file flowtrace wrote (its sha256 is in the marker); any other is left as it is.
# * A running engine is restarted only right after setup.sh installed it (nothing runs on
#   it yet); otherwise setup.sh says in one line that the options wait for a restart,
#   since restarting dockerd stops every container on it.

FLOWTRACE_STATE_DIR="${FLOWTRACE_SETUP_STATE_DIR:-/var/lib/flowtrace}"
ENGINE_MARKER="$FLOWTRACE_STATE_DIR/engine"
DAEMON_JSON="${FLOWTRACE_SETUP_DAEMON_JSON:-/etc/docker/daemon.json}"
DOCKERD_PIDFILE="${FLOWTRACE_SETUP_DOCKERD_PIDFILE:-/var/run/docker.pid}"
IPV6_DAEMON_OPTIONS='{
    "experimental": true,
    "ip6tables": true
}'
PID1_COMM_FILE="${PID1_COMM_FILE:-${FLOWTRACE_SETUP_PID1:-/proc/1/comm}}"
#: Set to 1 by write_ipv6_options when it wrote $DAEMON_JSON.
ENGINE_OPTIONS_WRITTEN=0
ENGINE_NOT_OURS=""

if ! declare -F package_version >/dev/null; then
    # The installed version of a package, nothing when it is not installed.
    package_version() {
        { dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null || true; } |
            awk '$1 == "install" && $2 == "ok" && $3 == "installed" { print $4 }'
    }
fi

marker_value() {
    [ -f "$ENGINE_MARKER" ] && sed -n "s/^$1=//p" "$ENGINE_MARKER" | head -n 1
}

file_sha256() {
    sha256sum "$1" | cut -d' ' -f1
}

# setup.sh installed the engine package $1: the engine is flowtrace's to configure.
record_engine_installed() {
    mkdir -p "$FLOWTRACE_STATE_DIR"
    {
        echo "# the Docker engine on this machine was set up by flowtrace's scripts/setup.sh"
        echo "installed=$1 $(package_version "$1")"
        echo "since=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } >"$ENGINE_MARKER"
}

# The pid of the running dockerd from its pid file, nothing when none runs.
dockerd_pid() {
    local pid
    pid="$(cat "$DOCKERD_PIDFILE" 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        echo "$pid"
    fi
}

# Why the running engine is not known to be flowtrace's own; nothing when it is.
engine_not_adoptable() {
    local pid
    if ! grep -q "Setting up docker.io" "$SETUP_LOG" 2>/dev/null; then
        echo "flowtrace's set-up log ($SETUP_LOG) shows no install of docker.io"
        return
    fi
    if [ "$(cat "$PID1_COMM_FILE" 2>/dev/null)" = systemd ]; then
        echo "PID 1 is systemd, so a unit may run dockerd"
        return
    fi
    if [ -e "$DAEMON_JSON" ]; then
        echo "$DAEMON_JSON exists: someone configured the engine"
        return
    fi
    pid="$(dockerd_pid)"
    if [ -z "$pid" ]; then
        echo "no dockerd runs (pid file $DOCKERD_PIDFILE)"
        return
    fi
    if [ "$(tr '\0' ' ' <"/proc/$pid/cmdline")" != "dockerd " ] ||
        [ "$(readlink "/proc/$pid/fd/1")" != "$DOCKERD_LOG" ] ||
        [ "$(readlink "/proc/$pid/fd/2")" != "$DOCKERD_LOG" ]; then
        echo "dockerd (pid $pid) is not the bare \`dockerd\` logging to $DOCKERD_LOG that setup.sh starts"
    fi
}

# A machine set up before the marker existed: adopt its engine when the evidence says
# flowtrace installed and started it (see above); say why not otherwise.
adopt_engine() {
    [ -f "$ENGINE_MARKER" ] && return 0
    local why
    why="$(engine_not_adoptable)"
    if [ -n "$why" ]; then
        ENGINE_NOT_OURS="$why"
        return 0
    fi
    mkdir -p "$FLOWTRACE_STATE_DIR"
    {
        echo "# the Docker engine on this machine was set up by flowtrace's scripts/setup.sh"
        echo "installed=docker.io $(package_version docker.io) (adopted: in $SETUP_LOG, dockerd logging to $DOCKERD_LOG)"
        echo "since=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } >"$ENGINE_MARKER"
    say "dockerd: adopted as flowtrace's own (docker.io installed by setup.sh, dockerd started by it; marker $ENGINE_MARKER)"
}

# The IPv6 NAT options in $DAEMON_JSON, on flowtrace's own engine only.
write_ipv6_options() {
    ENGINE_OPTIONS_WRITTEN=0
    if [ ! -f "$ENGINE_MARKER" ]; then
        say "dockerd: IPv6 NAT options left as they are (not known to be an engine flowtrace installed and started: ${ENGINE_NOT_OURS:-no marker $ENGINE_MARKER}); the ipv6 lab says what is missing"
        return 0
    fi
    local ours
    ours="$(marker_value daemon_json_sha256)"
    if [ -f "$DAEMON_JSON" ]; then
        if [ -z "$ours" ] || [ "$(file_sha256 "$DAEMON_JSON")" != "$ours" ]; then
            say "dockerd: $DAEMON_JSON is not the one flowtrace wrote: left as it is (IPv6 NAT needs \"ip6tables\": true and \"experimental\": true in it)"
            return 0
        fi
        if [ "$(cat "$DAEMON_JSON")" = "$IPV6_DAEMON_OPTIONS" ]; then
            return 0
        fi
    fi
    mkdir -p "$(dirname "$DAEMON_JSON")"
    printf '%s\n' "$IPV6_DAEMON_OPTIONS" >"$DAEMON_JSON.flowtrace-new"
    mv "$DAEMON_JSON.flowtrace-new" "$DAEMON_JSON"
    sed -i '/^daemon_json_sha256=/d' "$ENGINE_MARKER"
    echo "daemon_json_sha256=$(file_sha256 "$DAEMON_JSON")" >>"$ENGINE_MARKER"
    ENGINE_OPTIONS_WRITTEN=1
    say "dockerd: wrote $DAEMON_JSON (ip6tables, experimental: Docker 20.10's IPv6 NAT)"
}

# Start dockerd by hand (no systemd): in a session of its own so that it outlives this
# script, its output in $DOCKERD_LOG, and no other file descriptor of ours.  A shell's
# `setsid dockerd &` would hand it every descriptor this script inherited: run under
# `flock -x LOCK bash scripts/setup.sh`, dockerd (and its containerd) would hold that
# lock for as long as they run.
start_dockerd_detached() {
    "$PYTHON" - "$DOCKERD_LOG" <<'EOF'
import subprocess, sys
with open(sys.argv[1], "ab") as log:
    subprocess.Popen(
        ["dockerd"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        start_new_session=True, close_fds=True,
    )
EOF
}

# Stop the dockerd setup.sh started by hand, so that the next start reads new options.
stop_dockerd_by_hand() {
    local pid deadline
    pid="$(dockerd_pid)"
    [ -n "$pid" ] || return 0
    kill -TERM "$pid"
    deadline=$((SECONDS + DOCKERD_WAIT_S))
    while kill -0 "$pid" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || die "dockerd (pid $pid) did not stop within ${DOCKERD_WAIT_S} s"
        sleep 0.2
    done
}
