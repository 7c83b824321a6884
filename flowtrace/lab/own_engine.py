"""The IPv6 lab's own Docker engine: a private dockerd in a namespace of its own.

Docker 20.10 NATs IPv6 (MASQUERADE of a network's subnet, DNAT of ports published on
[::]) only with the daemon options "ip6tables" and "experimental", and making an IPv6
network turns on IPv6 forwarding in the engine's network namespace.  The machine's own
engine is the user's: flowtrace never changes its options, restarts it, or lets it
change the host's sysctls.  So scenario ipv6 runs on a dockerd of flowtrace's own:

* the network namespace ``ft6-host`` (/run/netns/ft6-host) is its host: its ip6tables,
  its forwarding sysctls, its bridges and docker-proxy listeners are all in there, and
  leave with it;
* dockerd runs there in a mount namespace of its own (sysfs mounted for the namespace,
  the cgroup tree bound back; Docker's overlay and namespace mounts stay inside), with
  its own data root, exec root, socket, pid file and containerd, the options
  {"ip6tables": true, "experimental": true}, no default bridge, and a config file of
  its own (the machine's /etc/docker/daemon.json is never read);
* `entered()` moves the calling (main) thread into ft6-host and points flowtrace at the
  engine's socket, so everything flowtrace does (the host's routes, rules, sockets and
  neighbours, "host" as an endpoint) is that host's; `flowtrace lab exec -- COMMAND`
  runs a command there.

`stop()` removes its containers, stops dockerd (and its containerd), and removes the
namespace, the data root and the run directory: nothing of it is left on the machine.
Recipe: moby's own tests (testutil/daemon) and /work/shared/research/multihost.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from flowtrace.endpoints import engines
from flowtrace.endpoints.engines import EngineChoice
from flowtrace.endpoints.netns import HOST_NETNS, enter_netns, netns_inode
from flowtrace.errors import FlowtraceError
from flowtrace.lab.links import ensure_netns, netns_usable

NETNS = "ft6-host"
NETNS_PATH = f"/run/netns/{NETNS}"
#: Its exec root, socket, pid file, config file and the cgroup tree's stash.
RUN_DIR = "/run/flowtrace/lab6"
EXEC_ROOT = f"{RUN_DIR}/exec"
SOCKET = f"{RUN_DIR}/docker.sock"
HOST = f"unix://{SOCKET}"
PIDFILE = f"{RUN_DIR}/docker.pid"
CONFIG = f"{RUN_DIR}/daemon.json"
KEY = f"{RUN_DIR}/key.json"
CGROUP_STASH = f"{RUN_DIR}/cgroup"
DATA_ROOT = "/var/lib/flowtrace-lab6"
LOG = "/var/log/flowtrace-lab6-dockerd.log"
CGROUP_PARENT = "flowtrace-lab6"
HOSTNAME = "ft6-host"
SELECTED_BY = "the IPv6 lab's own engine"
CHOICE = EngineChoice(host=HOST, selected_by=SELECTED_BY)
#: Its options: IPv6 NAT on (Docker 20.10 needs both), no docker0 (the lab makes its
#: networks), the trust key of its own (else dockerd writes /etc/docker/key.json).
OPTIONS = {
    "ip6tables": True,
    "experimental": True,
    "bridge": "none",
    "deprecated-key-path": KEY,
}
START_WAIT_S = 30.0
STOP_WAIT_S = 20.0

#: The mount namespace dockerd gets: `ip netns exec`'s fresh sysfs hides the cgroup tree
#: ("Devices cgroup isn't mounted"), so the tree is stashed, sysfs mounted, and bound back.
_LAUNCH = (
    "set -e; hostname {hostname}; mkdir -p {stash}; mount --rbind /sys/fs/cgroup {stash}; "
    "mount -t sysfs sysfs /sys; mount --rbind {stash} /sys/fs/cgroup; umount -l {stash}; "
    "exec dockerd --config-file {config} --data-root {data} --exec-root {exec_root} "
    "--pidfile {pidfile} -H {host} --cgroup-parent /{cgroup}"
)


def dockerd_pid() -> int | None:
    """The private dockerd's pid while it runs (its pid file, checked against /proc)."""
    try:
        with open(PIDFILE) as pidfile:
            pid = int(pidfile.read().strip() or 0)
    except (OSError, ValueError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            argv = cmdline.read().split(b"\0")
    except OSError:
        return None
    return (
        pid if argv and os.path.basename(argv[0]) == b"dockerd" and HOST.encode() in argv else None
    )


def answers() -> bool:
    """The engine answers GET /_ping on its socket."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(3)
            sock.connect(SOCKET)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(4096)
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and reply.rstrip().endswith(b"OK")


def running() -> bool:
    return dockerd_pid() is not None and answers()


def not_running() -> str:
    """What is missing while the engine does not run, in words."""
    return (
        f"the IPv6 lab's own dockerd (in namespace {NETNS}, socket {SOCKET}): "
        "`flowtrace lab up --scenario ipv6` starts it"
    )


def _write_config() -> None:
    os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
    with open(CONFIG + ".new", "w") as config:
        json.dump(OPTIONS, config, indent=4)
    os.replace(CONFIG + ".new", CONFIG)


def start() -> list[str]:
    """The namespace and the engine in it, started when they are not; what changed."""
    if running():
        return []
    if shutil.which("dockerd") is None:
        raise FlowtraceError(
            "the IPv6 lab runs its own dockerd, and dockerd is not installed "
            "(`bash scripts/setup.sh` installs Docker)"
        )
    changes = ensure_netns(NETNS, NETNS_PATH)
    if netns_inode(NETNS_PATH) == netns_inode(HOST_NETNS):
        raise FlowtraceError(f"{NETNS_PATH} names this process's own namespace: remove it")
    _bring_up_loopback()
    _write_config()
    os.makedirs(DATA_ROOT, mode=0o710, exist_ok=True)
    if dockerd_pid() is None:
        for stale in (PIDFILE, SOCKET):  # a killed dockerd leaves them, and a new one refuses
            if os.path.exists(stale):
                os.unlink(stale)
        launch = _LAUNCH.format(
            hostname=HOSTNAME, stash=CGROUP_STASH, config=CONFIG, data=DATA_ROOT,
            exec_root=EXEC_ROOT, pidfile=PIDFILE, host=HOST, cgroup=CGROUP_PARENT,
        )  # fmt: skip
        with open(LOG, "ab") as log:
            # its own session, none of our descriptors (a lock we hold stays ours), no tty
            subprocess.Popen(
                ["nsenter", f"--net={NETNS_PATH}", "unshare", "--mount", "--uts",
                 "--propagation", "slave", "sh", "-c", launch],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                close_fds=True, start_new_session=True,
            )  # fmt: skip
    deadline = time.monotonic() + START_WAIT_S
    while not answers():
        if time.monotonic() > deadline:
            raise FlowtraceError(
                f"the IPv6 lab's dockerd did not answer on {SOCKET} within "
                f"{START_WAIT_S:.0f} s (log: {LOG})"
            )
        time.sleep(0.2)
    changes.append(
        f"started the IPv6 lab's own dockerd (pid {dockerd_pid()}) in namespace {NETNS}, "
        f"options {json.dumps({k: OPTIONS[k] for k in ('ip6tables', 'experimental')})}, "
        f"socket {SOCKET} (log: {LOG})"
    )
    return changes


def _bring_up_loopback() -> None:
    from pyroute2 import NetNS

    with NetNS(NETNS) as ns:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")


def _remove_containers() -> list[str]:
    import docker

    removed = []
    client = docker.DockerClient(base_url=HOST, timeout=30)
    try:
        for container in client.containers.list(all=True):
            container.remove(force=True)  # PID 1 of a lab container ignores SIGTERM
            removed.append(f"container {container.name} ({container.id[:12]})")
    finally:
        client.close()
    return removed


def teardown(parts: Any) -> list[str]:
    """Everything on and of the engine: its containers, `parts` (a scenario's, given
    the engine's client, or None once the engine is gone), then the engine itself."""
    removed: list[str] = []
    if running():
        removed += _remove_containers()
        if parts is not None:
            with entered():
                removed += parts.remove(engines.client(timeout=60))[0]
    elif parts is not None and present():
        removed += parts.remove(None)[0]
    return removed + stop()


def stop() -> list[str]:
    """Everything the engine is and made: containers, dockerd and its containerd, the
    namespace, the data root, the run directory and its cgroup; what was removed."""
    from pyroute2 import netns

    removed: list[str] = []
    pid = dockerd_pid()
    if pid is not None:
        if answers():
            removed += _remove_containers()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.1)
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        removed.append(f"the IPv6 lab's own dockerd (pid {pid})")
    engines.forget(CHOICE)
    if os.path.exists(NETNS_PATH):
        netns.remove(NETNS)
        removed.append(f"namespace {NETNS}")
    for path in (DATA_ROOT, RUN_DIR):
        if os.path.isdir(path):
            shutil.rmtree(path)
            removed.append(f"{path}")
    _remove_cgroups()
    return removed


def _remove_cgroups() -> None:
    """The cgroups dockerd made under CGROUP_PARENT (v1: one per controller), emptied
    by the containers' removal."""
    import glob

    for top in glob.glob(f"/sys/fs/cgroup/{CGROUP_PARENT}") + glob.glob(
        f"/sys/fs/cgroup/*/{CGROUP_PARENT}"
    ):
        for sub in sorted((d for d, _, _ in os.walk(top)), key=len, reverse=True):
            with suppress(OSError):
                os.rmdir(sub)


def present() -> bool:
    """Something of the engine is on the machine (its namespace, process or files)."""
    return (
        dockerd_pid() is not None
        or os.path.exists(NETNS_PATH)
        or os.path.isdir(DATA_ROOT)
        or os.path.isdir(RUN_DIR)
    )


@contextmanager
def entered() -> Iterator[EngineChoice]:
    """The calling thread in ft6-host and flowtrace asking the private engine, for the
    block; the thread must be the process's main thread, so that "host" (the process's
    namespace) and every thread and child started in the block are in ft6-host too."""
    if threading.current_thread() is not threading.main_thread():
        raise FlowtraceError("the IPv6 lab's host can be entered from the main thread only")
    if not netns_usable(NETNS_PATH):
        raise FlowtraceError(
            f"the IPv6 lab is not up (no namespace {NETNS}): run `flowtrace lab up --scenario ipv6`"
        )
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(NETNS_PATH)
        try:
            with engines.using(CHOICE) as choice:
                yield choice
        finally:
            enter_netns(f"/proc/self/fd/{back}")
    finally:
        os.close(back)


def run(command: Sequence[str]) -> int:
    """`command` in ft6-host with DOCKER_HOST at the private engine (`flowtrace` is this
    flowtrace); its exit status."""
    import sys

    argv = list(command)
    if argv and argv[0] == "flowtrace":
        argv = [sys.executable, "-m", "flowtrace", *argv[1:]]
    env = {**os.environ, "DOCKER_HOST": HOST}
    env.pop("DOCKER_CONTEXT", None)
    with entered():
        try:
            return subprocess.call(argv, env=env)
        except FileNotFoundError:
            raise FlowtraceError(f"{argv[0]}: command not found") from None
