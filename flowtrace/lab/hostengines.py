"""The lab's extra Docker hosts: what they are, their engines' start and stop, their contexts.

See flowtrace.lab.hosts (scenario `hosts`) for the whole; here the hosts as data, each
one's own dockerd started in its network and mount namespaces and stopped by its own
pid, and the Docker context that names it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from flowtrace.endpoints.agent_image import KEEP_IMAGE_ENGINE_LABEL
from flowtrace.endpoints.contexts import config_dir, read_context, remove_context, write_context
from flowtrace.errors import FlowtraceError, MissingToolError
from flowtrace.lab.base import HTTPD_COMMAND

SCENARIO = "hosts"
ROOT = "/run/flowtrace-lab/hosts"
DATA = "/var/lib/flowtrace-lab"
LAN_NETNS = "ft-lan"
LAN_PATH = f"/run/netns/{LAN_NETNS}"
LAN_BRIDGE = "br0"
#: Marks the lab's links (ifalias): links carry no labels.
LAN_ALIAS = "flowtrace lab hosts LAN"
SUBNET = "198.18.20.0/24"
PREFIXLEN = 24
#: The hosts' own ranges (bridges, overlays): only inside their namespaces, checked anyway.
HOSTS_RANGE = "10.213.0.0/16"
SWARM_POOL = "10.213.128.0/17"
OVERLAY = "ftover"
MACVLAN = "ftmv"
#: What a Docker context the lab made says of itself (`docker context ls` shows it).
CONTEXT_DESCRIPTION = "flowtrace lab host"
ENGINE_START_S = 30.0
ENGINE_STOP_S = 25.0
LAN_IFNAME = "eth0"


@dataclass(frozen=True)
class HostContainer:
    name: str
    network: str  # "bridge", OVERLAY or MACVLAN
    command: tuple[str, ...] = ("sleep", "infinity")
    #: (container port, host port) published with -p.
    publish: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class LabHost:
    name: str  # the Docker context and the endpoints' HOST: c1@hosta
    netns: str
    lan_ip: str
    bip: str  # docker0's address
    pool: str  # where its own networks (docker_gwbridge) take their subnets
    macvlan_range: str
    containers: tuple[HostContainer, ...]

    @property
    def root(self) -> str:
        return f"{ROOT}/{self.name}"

    @property
    def data_root(self) -> str:
        return f"{DATA}/{self.name}"

    @property
    def socket(self) -> str:
        return f"{self.root}/docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pidfile(self) -> str:
        return f"{self.root}/docker.pid"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    @property
    def lan_port(self) -> str:
        """The LAN bridge's port that leads to this host."""
        return f"ft-{self.name}"


HOSTS = (
    LabHost(
        "hosta",
        "ft-host-a",
        "198.18.20.2",
        "10.213.1.1/24",
        "10.213.16.0/20",
        "198.18.20.64/28",
        (HostContainer("c1", "bridge"), HostContainer("o1", OVERLAY), HostContainer("m1", MACVLAN)),
    ),
    LabHost(
        "hostb",
        "ft-host-b",
        "198.18.20.3",
        "10.213.2.1/24",
        "10.213.32.0/20",
        "198.18.20.80/28",
        (
            HostContainer("web", "bridge", HTTPD_COMMAND, ((80, 8080),)),
            HostContainer("o2", OVERLAY),
            HostContainer("m2", MACVLAN),
        ),
    ),
)
MANAGER, WORKER = HOSTS
LAN_GATEWAY = "198.18.20.1"  # no one has it: the macvlan networks need one named


# --- the engines ---------------------------------------------------------------------------


def client_of(host: LabHost, timeout: float = 60) -> Any:
    import docker

    return docker.DockerClient(base_url=host.url, timeout=timeout)


def answers(host: LabHost) -> bool:
    from docker.errors import DockerException

    if not os.path.exists(host.socket):
        return False
    try:
        with contextlib.closing(client_of(host, timeout=5)) as client:
            client.ping()
    except (DockerException, OSError):
        return False
    return True


def engine_pid(host: LabHost) -> int | None:
    """The pid of the host's own dockerd, from its pid file, when it is that dockerd
    (its command line names the host's data-root) and alive."""
    try:
        with open(host.pidfile) as handle:
            pid = int(handle.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError):
        return None
    return pid if is_engine_of(argv, state, host.data_root) else None


def is_engine_of(argv: list[bytes], state: str, data_root: str) -> bool:
    """A live dockerd whose command line names this data-root (pure)."""
    if state == "Z" or b"--data-root" not in argv:
        return False
    at = argv.index(b"--data-root") + 1
    return at < len(argv) and argv[at].decode(errors="replace") == data_root


def _daemon_config(host: LabHost) -> dict[str, Any]:
    return {
        "bip": host.bip,
        "default-address-pools": [{"base": host.pool, "size": 24}],
        "iptables": True,
        "log-level": "warn",
    }


def start_engine(host: LabHost) -> list[str]:
    """Start the host's dockerd in its namespaces and wait until it answers."""
    for tool in ("nsenter", "unshare", "dockerd"):
        if shutil.which(tool) is None:
            raise MissingToolError(f"{tool} is missing (Debian: util-linux, docker.io)")
    root = host.root
    for folder in (root, f"{root}/etc-docker", f"{root}/cgstash", host.data_root):
        os.makedirs(folder, exist_ok=True)
    with open(f"{root}/daemon.json", "w") as handle:
        json.dump(_daemon_config(host), handle)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(host.socket)
    script = (
        f"hostname ft-{host.name} && mount --bind {root}/etc-docker /etc/docker && "
        f"mount --rbind /sys/fs/cgroup {root}/cgstash && mount -t sysfs sysfs /sys && "
        f"mount --rbind {root}/cgstash /sys/fs/cgroup && umount -l {root}/cgstash && "
        f"exec dockerd --data-root {host.data_root} --exec-root {root}/exec "
        f"--pidfile {host.pidfile} -H {host.url} --config-file {root}/daemon.json "
        f"--cgroup-parent /ft-{host.name} --label {KEEP_IMAGE_ENGINE_LABEL}"
    )
    with open(f"{root}/dockerd.log", "ab") as log:
        subprocess.Popen(
            [
                "nsenter",
                f"--net={host.netns_path}",
                "unshare",
                "-m",
                "-u",
                "--propagation",
                "slave",
                "sh",
                "-c",
                script,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + ENGINE_START_S
    while not answers(host):
        if time.monotonic() > deadline:
            raise FlowtraceError(
                f"host {host.name}'s dockerd did not answer within {ENGINE_START_S:.0f} s "
                f"(see {root}/dockerd.log)"
            )
        time.sleep(0.2)
    return [f"started dockerd of {host.name} (pid {engine_pid(host)}, {host.url})"]


def stop_engine(host: LabHost) -> list[str]:
    """Everything of the host's engine stopped, whatever state it is in: its containers
    removed through it (when it answers), the dockerd stopped by its own pid, then what
    outlives a dockerd that died or was killed (its containerd, the shims, the containers'
    processes: each found by the host's own paths or cgroup, killed by its pid), then its
    cgroups.  With no process of the host left, nothing holds its private mount namespace,
    so its mounts (overlay2, the sandboxes' namespaces) go with it."""
    from docker.errors import APIError, DockerException

    removed: list[str] = []
    if answers(host):
        with (
            contextlib.suppress(DockerException, OSError),
            contextlib.closing(client_of(host, timeout=30)) as client,
        ):
            for container in client.containers.list(all=True):
                with contextlib.suppress(APIError):
                    container.remove(force=True)
                    removed.append(f"container {container.name}@{host.name}")
            with contextlib.suppress(APIError, DockerException):
                client.swarm.leave(force=True)
    pid = engine_pid(host) or next(iter(_processes_of(host, "dockerd")), None)
    if pid is not None:
        _end(pid, ENGINE_STOP_S)
        removed.append(f"dockerd of {host.name} (pid {pid})")
    for kind in ("containerd", "other"):  # containerd before its shims: it restarts none
        for left in _processes_of(host, kind):
            _end(left, 0)
            removed.append(f"{kind} process {left} of {host.name}")
    removed += remove_cgroups(host)
    return removed


def _end(pid: int, grace_s: float) -> None:
    """SIGTERM and `grace_s` to go (0: SIGKILL at once), then SIGKILL; waits until gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM if grace_s else signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    _reap(pid)
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _reap(pid: int) -> None:
    """Collect the engine's exit status if this process started it (no zombie left)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def process_kind(argv: list[bytes], cgroups: str, host: LabHost) -> str | None:
    """What a process is to the host (pure): "dockerd" (its data-root), "containerd" (its
    config under the host's exec-root), "other" (a shim naming the exec-root, or any
    process in the host's cgroup: a container's), else None: not the host's."""
    if is_engine_of(argv, "S", host.data_root):
        return "dockerd"
    root = host.root.encode() + b"/"
    names_root = any(arg.startswith(root) for arg in argv)
    if names_root and argv and os.path.basename(argv[0]) == b"containerd":
        return "containerd"
    parent = f"/ft-{host.name}"
    in_cgroup = any(
        line.split(":", 2)[-1] == parent or line.split(":", 2)[-1].startswith(parent + "/")
        for line in cgroups.splitlines()
    )
    return "other" if names_root or in_cgroup else None


def _processes_of(host: LabHost, kind: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().rstrip(b"\0").split(b"\0")
            with open(f"/proc/{entry}/cgroup") as handle:
                cgroups = handle.read()
        except OSError:
            continue
        if process_kind(argv, cgroups, host) == kind and _alive(int(entry)):
            found.append(int(entry))
    return found


def cgroup_dirs(host: LabHost, base: str = "/sys/fs/cgroup") -> list[str]:
    """The host's cgroups (`--cgroup-parent /ft-NAME` and the containers' below it), in
    every hierarchy (v1's controllers, v2's unified), deepest first."""
    tops = [os.path.join(base, f"ft-{host.name}")]
    with contextlib.suppress(OSError):
        tops += [os.path.join(base, c, f"ft-{host.name}") for c in sorted(os.listdir(base))]
    found: list[str] = []
    for top in tops:
        if not os.path.isdir(top) or os.path.islink(top):
            continue
        for folder, _, _ in os.walk(top, topdown=False):
            found.append(folder)
    return found


def remove_cgroups(host: LabHost) -> list[str]:
    """rmdir of each of the host's cgroups (a cgroup with a process in it stays)."""
    left = 0
    gone = 0
    for folder in cgroup_dirs(host):
        try:
            os.rmdir(folder)
            gone += 1
        except OSError:
            left += 1
    if not gone:
        return []
    return [f"{gone} cgroups of {host.name}" + (f" ({left} still in use)" if left else "")]


def leftovers(host: LabHost) -> list[str]:
    """What of the host is still on this machine, in words (none after a removal)."""
    found = [
        f"{kind} pid {pid}"
        for kind in ("dockerd", "containerd", "other")
        for pid in _processes_of(host, kind)
    ]
    found += [f"folder {f}" for f in (host.root, host.data_root) if os.path.exists(f)]
    found += [f"cgroup {f}" for f in cgroup_dirs(host)]
    return found


# --- Docker contexts -----------------------------------------------------------------------


def context_is_foreign(host: LabHost) -> bool:
    """A Docker context of the host's name exists and is not the lab's."""
    found = read_context(host.name)
    return found is not None and found.description != CONTEXT_DESCRIPTION


def register(host: LabHost) -> list[str]:
    found = read_context(host.name)
    if found is not None and (found.host, found.description) == (host.url, CONTEXT_DESCRIPTION):
        return []
    write_context(host.name, host.url, CONTEXT_DESCRIPTION)
    return [f"Docker context {host.name} ({host.url})"]


def unregister(host: LabHost) -> list[str]:
    found = read_context(host.name)
    if found is None or found.description != CONTEXT_DESCRIPTION:
        return []
    remove_context(host.name)
    return [f"Docker context {host.name}"]


def remove_empty_context_folders() -> None:
    """The docker CLI's context folders, when the lab's contexts were all they held."""
    base = os.path.join(config_dir(), "contexts")
    for folder in (os.path.join(base, "meta"), os.path.join(base, "tls"), base, config_dir()):
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only when empty
