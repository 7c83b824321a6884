# The container engine scripts/setup.sh uses: what is there is kept and used.
#
# Sourced by setup.sh.  decide_engine only looks (dpkg-query, `apt-get -s`, the engines'
# sockets, PID 1's name) and fills ENGINE_LINE and ACTIONS; apply_engine does ACTIONS.
# `setup.sh --decide-only` prints them and changes nothing, which is how the decision
# tests run it against stand-in dpkg-query/apt-get/systemctl on PATH.
#
# The rules: an engine installed (docker-ce, docker.io, moby-engine, podman) or
# answering on its socket is used as it is; Debian's docker.io is installed only where
# there is no engine at all, and never where an install would remove a package; the
# engine is started with systemd where systemd is PID 1, else as a process of its own.
# For the tests (--for-tests) Podman is installed too where it is missing (it conflicts
# with nothing); the tests start its API themselves.

# State probes, overridable so the decision tests can point them at stand-ins.
PID1_COMM_FILE="${FLOWTRACE_SETUP_PID1:-/proc/1/comm}"
DOCKER_SOCKET="${FLOWTRACE_SETUP_DOCKER_SOCKET:-/var/run/docker.sock}"
PODMAN_SOCKET="${FLOWTRACE_SETUP_PODMAN_SOCKET:-/run/podman/podman.sock}"
DOCKER_PACKAGES=(docker-ce docker.io moby-engine)
PODMAN_PACKAGES=(podman)
#: What the tests need of Podman: the engine, its network stack, rootless networking.
PODMAN_TEST_PACKAGES=(podman netavark aardvark-dns slirp4netns uidmap)

ENGINE_LINE=""
ACTIONS=()

# The installed version of a package, nothing when it is not installed.
package_version() {
    { dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null || true; } |
        awk '$1 == "install" && $2 == "ok" && $3 == "installed" { print $4 }'
}

systemd_is_pid1() {
    [ "$(cat "$PID1_COMM_FILE" 2>/dev/null)" = systemd ]
}

# "NAME VERSION" of the engine answering on a unix socket (GET /version), else nothing.
socket_engine() {
    [ -S "$1" ] || return 1
    "$PYTHON" - "$1" <<'EOF' 2>/dev/null
import json, socket, sys
with socket.socket(socket.AF_UNIX) as s:
    s.settimeout(3)
    s.connect(sys.argv[1])
    s.sendall(b"GET /version HTTP/1.0\r\nHost: engine\r\n\r\n")
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
head, _, body = reply.partition(b"\r\n\r\n")
if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0] + b" ":
    sys.exit(1)
answer = json.loads(body)
names = " ".join(str(c.get("Name", "")) for c in answer.get("Components") or [])
print("Podman" if "podman" in names.lower() else "Docker", answer.get("Version", "?"))
EOF
}

# Refuse (one line) an install that apt-get says would remove any package.
check_install_removes_nothing() {
    local plan removed
    if [ "$DECIDE_ONLY" != 1 ] && [ "$APT_UPDATED" = 0 ]; then
        quietly apt-get update -qq # a fresh machine may have no package lists yet
        APT_UPDATED=1
    fi
    if ! plan="$(apt-get -s install -y "$@" 2>&1)"; then
        die "apt-get cannot install $*: $(printf '%s\n' "$plan" | grep -m1 '^E:' || echo "$plan" | tail -n 1)"
    fi
    removed="$(printf '%s\n' "$plan" | awk '/^Remv / { print $2 }' | tr '\n' ' ')"
    if [ -n "$removed" ]; then
        die "not installing $*: apt-get would remove ${removed% } (flowtrace never removes or replaces a package)"
    fi
}

decide_engine() {
    local for_tests="$1" pkg version docker_pkg="" docker_version="" podman_version=""
    for pkg in "${DOCKER_PACKAGES[@]}"; do
        version="$(package_version "$pkg")"
        if [ -n "$version" ] && [ -z "$docker_pkg" ]; then
            docker_pkg="$pkg"
            docker_version="$version"
        fi
    done
    podman_version="$(package_version "${PODMAN_PACKAGES[0]}")"
    local answering podman_answering=""
    answering="$(socket_engine "$DOCKER_SOCKET" || true)"
    podman_answering="$(socket_engine "$PODMAN_SOCKET" || true)"
    local also=""
    if [ -n "$podman_version" ] && [ -n "$docker_pkg$answering" ]; then
        also="; Podman (podman $podman_version) is installed too: flowtrace uses it with --engine podman"
    fi

    if [ -n "$answering" ]; then
        local from="$docker_pkg $docker_version"
        [ -n "$docker_pkg" ] || from="from no Docker package: installed by other means"
        ENGINE_LINE="engine: $answering answering on $DOCKER_SOCKET ($from): used as it is, nothing installed$also"
    elif [ -n "$docker_pkg" ]; then
        if systemd_is_pid1; then
            ENGINE_LINE="engine: Docker ($docker_pkg $docker_version) is installed and not answering: starting it with systemd (systemctl start docker)$also"
            ACTIONS+=("systemctl-start docker")
        else
            ENGINE_LINE="engine: Docker ($docker_pkg $docker_version) is installed and not answering: starting dockerd (PID 1 is not systemd; log: $DOCKERD_LOG)$also"
            ACTIONS+=("dockerd")
        fi
        ACTIONS+=("wait-docker")
    elif [ -n "$podman_version" ] || [ -n "$podman_answering" ]; then
        local how="flowtrace asks its API, started for each command when nothing serves it"
        if [ -n "$podman_answering" ]; then
            how="answering on $PODMAN_SOCKET"
        elif systemd_is_pid1; then
            how="its API socket started with systemd (systemctl start podman.socket)"
            ACTIONS+=("systemctl-start podman.socket")
        fi
        ENGINE_LINE="engine: Podman (podman ${podman_version:-${podman_answering#* }}) and no Docker: flowtrace uses Podman ($how); no Docker is installed"
    else
        check_install_removes_nothing docker.io
        if systemd_is_pid1; then
            ENGINE_LINE="engine: none installed or answering: installing Debian's docker.io, started with systemd"
            ACTIONS+=("install docker.io" "systemctl-start docker" "wait-docker")
        else
            ENGINE_LINE="engine: none installed or answering: installing Debian's docker.io, started as dockerd (PID 1 is not systemd; log: $DOCKERD_LOG)"
            ACTIONS+=("install docker.io" "dockerd" "wait-docker")
        fi
    fi

    if [ "$for_tests" = 1 ]; then
        local missing=()
        for pkg in "${PODMAN_TEST_PACKAGES[@]}"; do
            [ -n "$(package_version "$pkg")" ] || missing+=("$pkg")
        done
        if [ "${#missing[@]}" -gt 0 ]; then
            check_install_removes_nothing "${missing[@]}"
            ACTIONS+=("install ${missing[*]}")
        fi
    fi
}

# A dockerd that was killed leaves its pid file, and a new one refuses to start.
start_dockerd_by_hand() {
    if pgrep -x dockerd >/dev/null; then
        return 0
    fi
    if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        rm -f /var/run/docker.pid
    fi
    # No systemd: start it in its own session so it outlives this script, and with none of
    # this shell's descriptors but the log: a lock held around this script (`flock -x FILE
    # bash scripts/setup.sh`) must not live on in dockerd and block everyone after.
    "$PYTHON" - "$DOCKERD_LOG" <<'EOF'
import subprocess, sys
with open(sys.argv[1], "ab") as log:
    subprocess.Popen(
        ["dockerd"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        close_fds=True, start_new_session=True,
    )
EOF
}

wait_for_docker() {
    local deadline=$((SECONDS + DOCKERD_WAIT_S))
    until socket_engine "$DOCKER_SOCKET" >/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 5 "$DOCKERD_LOG" >&2 || true
            die "the Docker engine did not answer on $DOCKER_SOCKET within ${DOCKERD_WAIT_S} s (log: $DOCKERD_LOG)"
        fi
        sleep 0.5
    done
}

apply_engine() {
    local action
    for action in "${ACTIONS[@]}"; do
        case "$action" in
        install\ *)
            # shellcheck disable=SC2086 # the package names are words
            apt_install ${action#install }
            say "packages: installed ${action#install }"
            ;;
        systemctl-start\ *) quietly systemctl start "${action#systemctl-start }" ;;
        dockerd) start_dockerd_by_hand ;;
        wait-docker) wait_for_docker ;;
        *) die "unknown set-up action $action" ;;
        esac
    done
}
