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
        f"--cgroup-parent /ft-{host.name}"
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
    """Its containers removed first, then the engine stopped by its own pid."""
    from docker.errors import APIError, DockerException

    removed: list[str] = []
    if answers(host):
        with contextlib.closing(client_of(host)) as client:
            for container in client.containers.list(all=True):
                with contextlib.suppress(APIError):
                    container.remove(force=True)
                    removed.append(f"container {container.name}@{host.name}")
            with contextlib.suppress(APIError, DockerException):
                client.swarm.leave(force=True)
    pid = engine_pid(host)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + ENGINE_STOP_S
        while engine_pid(host) == pid and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if engine_pid(host) == pid:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            _reap(pid)
        removed.append(f"dockerd of {host.name} (pid {pid})")
    return removed


def _reap(pid: int) -> None:
    """Collect the engine's exit status if this process started it (no zombie left)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


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
