"""A replica of the datapath an engine we cannot install builds, in namespaces of our own.

Docker 28 and 29 (either firewall backend) and netavark's nftables driver cannot be
installed here, yet their rules are known (moby's generated rule documents, netavark's
source and tests).  So this builds what such an engine builds for a small layout: a
"host" namespace (ftfw-h) with one bridge per network and a veth to each container
namespace (ftfw-c1..ftfw-c8), an uplink to an outside namespace (ftfw-out) with
documentation addresses, and loads exactly the rules the engine writes for that layout
(flowtrace/lab/replicas/<engine>/, SOURCE.md says where each came from) into the
host namespace.  Real packets then meet real rules: `flowtrace ping netns:ftfw-c1
netns:ftfw-c3`, `flowtrace rules ...`.  Nothing outside the ftfw- namespaces changes,
and `down` removes them all.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowtrace.endpoints.netns import run_in_netns
from flowtrace.errors import ExitStatus, FlowtraceError, MissingToolError
from flowtrace.lab.base import LabConflictError
from flowtrace.lab.guard import require_privileges
from flowtrace.lab.links import disable_ipv6, names_the_host, netns_usable, thread_is_in
from flowtrace.lab.outside import host_range_conflicts

RULES_DIR = Path(__file__).parent / "replicas"
PREFIX = "ftfw-"
HOST = "ftfw-h"
OUTSIDE = "ftfw-out"
UPLINK = "ftfw-up"
UPLINK_IP, OUTSIDE_IP, UPLINK_PREFIXLEN = "198.51.100.233", "198.51.100.234", 29
UPLINK_RANGE = "198.51.100.232/29"
CONTAINER_RANGE = "10.247.0.0/16"
LOCK_PATH = "/run/lock/flowtrace-replica.lock"


@dataclass(frozen=True)
class Network:
    """One network of the layout: its bridge in the host namespace and its containers."""

    bridge: str
    gateway: str
    prefixlen: int
    members: tuple[tuple[str, str], ...]  # (container namespace, address)
    what: str
    #: --internal: containers get no default route.
    internal: bool = False


NETWORKS = (
    Network("ftfw-d0", "10.247.0.1", 24, (("ftfw-c1", "10.247.0.2"), ("ftfw-c2", "10.247.0.3")),
            "the default bridge (docker0, Podman's podman0); ftfw-c1 publishes 8080->80/tcp"),
    Network("ftfw-b1", "10.247.1.1", 24, (("ftfw-c3", "10.247.1.2"), ("ftfw-c4", "10.247.1.3")),
            "a user-defined network (Podman: --opt isolate=true)"),
    Network("ftfw-b2", "10.247.2.1", 24, (("ftfw-c5", "10.247.2.2"), ("ftfw-c6", "10.247.2.3")),
            "a user-defined network with ICC off (Podman: --opt isolate=true)"),
    Network("ftfw-int", "10.247.3.1", 24, (("ftfw-c7", "10.247.3.2"),),
            "an --internal network", internal=True),
    Network("ftfw-rt", "10.247.4.1", 24, (("ftfw-c8", "10.247.4.2"),),
            "a network with gateway mode routed; ftfw-c8 publishes 8088->80/tcp"),
)  # fmt: skip


@dataclass(frozen=True)
class Engine:
    name: str
    title: str
    #: "iptables" (loaded with iptables-restore) or "nftables" (nft -f).
    backend: str
    variants: tuple[str, ...] = ()

    @property
    def suffix(self) -> str:
        return "iptables" if self.backend == "iptables" else "nft"

    def rules_file(self, variant: str | None = None) -> Path:
        return RULES_DIR / self.name / f"{variant or 'rules'}.{self.suffix}"


ENGINES = {
    e.name: e
    for e in (
        Engine("docker-20.10", "Docker 20.10 (iptables)", "iptables", ("noproxy",)),
        Engine("docker-28.5", "Docker 28.5 (iptables)", "iptables", ("noproxy",)),
        Engine("docker-29.7-iptables", "Docker 29.7, iptables backend", "iptables", ("noproxy",)),
        Engine("docker-29.7-nftables", "Docker 29.7, nftables backend", "nftables", ("noproxy",)),
        Engine("netavark-1-iptables", "Podman, netavark 1.x iptables driver", "iptables"),
        Engine("netavark-2-nftables", "Podman, netavark 2.x nftables driver", "nftables"),
    )
}


@dataclass(frozen=True)
class Replica:
    engine: Engine
    variant: str | None
    namespaces: tuple[str, ...]

    def address(self, container: str) -> str:
        for network in NETWORKS:
            for name, ip in network.members:
                if name == container:
                    return ip
        raise KeyError(container)


def namespaces() -> tuple[str, ...]:
    """Every namespace the replica makes, the host's first."""
    members = tuple(name for network in NETWORKS for name, _ in network.members)
    return (HOST, OUTSIDE, *members)


def engine_named(name: str) -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise FlowtraceError(
            f"no replica of {name!r}: give one of {', '.join(ENGINES)}", ExitStatus.USAGE
        ) from None


@contextmanager
def locked() -> Iterator[None]:
    """One replica on this machine at a time: its names are fixed."""
    os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
    with open(LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def replica(engine: str, variant: str | None = None) -> Iterator[Replica]:
    """A replica for the duration of a `with` block, removed on every way out."""
    with locked():
        try:
            yield build(engine, variant)
        finally:
            remove()


def build(engine: str, variant: str | None = None) -> Replica:
    """Make the layout's namespaces and links and load the engine's rules (any earlier
    replica is removed first)."""
    require_privileges()
    chosen = engine_named(engine)
    _check_tools(chosen)
    remove()
    conflicts = host_range_conflicts(CONTAINER_RANGE, "") + host_range_conflicts(UPLINK_RANGE, "")
    if conflicts:
        raise LabConflictError(
            f"the replica's ranges ({CONTAINER_RANGE}, {UPLINK_RANGE}) are in use on this "
            f"host: {'; '.join(conflicts)}"
        )
    try:
        for name in namespaces():
            _create_netns(name)
        run_in_netns(_path(HOST), _build_host)
        for network in NETWORKS:
            for name, ip in network.members:
                gateway = None if network.internal else network.gateway
                run_in_netns(_path(name), _configure_end, name, ip, network.prefixlen, gateway)
        run_in_netns(_path(OUTSIDE), _configure_outside)
        load_rules(chosen, variant)
    except BaseException:
        remove()
        raise
    return Replica(chosen, variant, namespaces())


def load_rules(engine: Engine, variant: str | None = None) -> None:
    """Load the engine's rules into the host namespace (a variant replaces what it names:
    iptables-restore replaces the tables in the file, nft the whole ruleset)."""
    text = engine.rules_file(None).read_text()
    extra = engine.rules_file(variant).read_text() if variant else None
    if variant and variant not in engine.variants:
        raise FlowtraceError(f"{engine.name} has no variant {variant!r}", ExitStatus.USAGE)

    def load() -> None:
        if engine.backend == "iptables":
            _run(["iptables-restore"], text)
            if extra:
                _run(["iptables-restore"], extra)
        else:
            _run(["nft", "flush", "ruleset"], "")
            _run(["nft", "-f", "-"], extra or text)

    run_in_netns(_path(HOST), load)


def remove() -> list[str]:
    """Remove every namespace of the replica (their links go with them)."""
    from pyroute2 import netns

    removed = []
    for name in namespaces():
        path = _path(name)
        if not os.path.exists(path):
            continue
        if names_the_host(path):
            raise FlowtraceError(f"{path} names this host's own namespace: refusing to remove it")
        netns.remove(name)
        removed.append(f"removed namespace {name}")
    return removed


def present() -> list[str]:
    """The replica's namespaces that exist now."""
    return [name for name in namespaces() if netns_usable(_path(name))]


# --- inside the namespaces ---------------------------------------------------------------


def _path(name: str) -> str:
    return f"/run/netns/{name}"


def _create_netns(name: str) -> None:
    from pyroute2 import netns

    netns.create(name)
    if names_the_host(_path(name)):
        raise FlowtraceError(f"{_path(name)} names this host's own namespace")


def _host_inode() -> int:
    return os.stat(_path(HOST)).st_ino


def _build_host() -> None:
    from pyroute2 import IPRoute

    if not thread_is_in(_host_inode()):
        raise FlowtraceError("not inside the replica's host namespace: refusing to change links")
    _sysctl("net/ipv4/ip_forward", "1")
    _sysctl("net/bridge/bridge-nf-call-iptables", "1", missing_ok=True)
    with IPRoute() as ipr:
        _up(ipr, "lo")
        for network in NETWORKS:
            ipr.link("add", ifname=network.bridge, kind="bridge")
            bridge = ipr.link_lookup(ifname=network.bridge)[0]
            disable_ipv6(network.bridge)
            ipr.addr("add", index=bridge, address=network.gateway, prefixlen=network.prefixlen)
            ipr.link("set", index=bridge, state="up")
            for name, _ in network.members:
                veth = f"veth{name.removeprefix(PREFIX)}"
                peer = {"ifname": "eth0", "net_ns_fd": name}
                ipr.link("add", ifname=veth, kind="veth", peer=peer)
                index = ipr.link_lookup(ifname=veth)[0]
                disable_ipv6(veth)
                ipr.link("set", index=index, master=bridge, state="up")
        ipr.link("add", ifname=UPLINK, kind="veth", peer={"ifname": "eth0", "net_ns_fd": OUTSIDE})
        uplink = ipr.link_lookup(ifname=UPLINK)[0]
        disable_ipv6(UPLINK)
        ipr.addr("add", index=uplink, address=UPLINK_IP, prefixlen=UPLINK_PREFIXLEN)
        ipr.link("set", index=uplink, state="up")


def _configure_end(name: str, ip: str, prefixlen: int, gateway: str | None) -> None:
    from pyroute2 import IPRoute

    if not thread_is_in(os.stat(_path(name)).st_ino):
        raise FlowtraceError(f"not inside {name}: refusing to change links")
    with IPRoute() as ipr:
        _up(ipr, "lo")
        index = ipr.link_lookup(ifname="eth0")[0]
        disable_ipv6("eth0")
        ipr.addr("add", index=index, address=ip, prefixlen=prefixlen)
        ipr.link("set", index=index, state="up")
        if gateway is not None:
            ipr.route("add", dst="0.0.0.0/0", gateway=gateway)


def _configure_outside() -> None:
    """The outside host: a neighbour on the uplink that routes the containers' range to
    the host (what a LAN router does for routed networks), and nothing else."""
    from pyroute2 import IPRoute

    if not thread_is_in(os.stat(_path(OUTSIDE)).st_ino):
        raise FlowtraceError(f"not inside {OUTSIDE}: refusing to change links")
    with IPRoute() as ipr:
        _up(ipr, "lo")
        index = ipr.link_lookup(ifname="eth0")[0]
        disable_ipv6("eth0")
        ipr.addr("add", index=index, address=OUTSIDE_IP, prefixlen=UPLINK_PREFIXLEN)
        ipr.link("set", index=index, state="up")
        ipr.route("add", dst=CONTAINER_RANGE, gateway=UPLINK_IP)


def _up(ipr: Any, ifname: str) -> None:
    ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")


def _sysctl(key: str, value: str, missing_ok: bool = False) -> None:
    try:
        with open(f"/proc/sys/{key}", "w") as knob:
            knob.write(value)
    except FileNotFoundError:
        if not missing_ok:
            raise


def _run(argv: list[str], stdin: str) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise FlowtraceError(f"{' '.join(argv)} in {HOST}: {message}")


def _check_tools(engine: Engine) -> None:
    import shutil

    tool = "iptables-restore" if engine.backend == "iptables" else "nft"
    if shutil.which(tool) is None:
        package = "iptables" if engine.backend == "iptables" else "nftables"
        raise MissingToolError(f"{tool} is not installed (Debian: apt-get install {package})")


def describe(r: Replica) -> list[str]:
    """What was built, for people: the engine, the networks, the endpoints to trace."""
    lines = [f"replica of {r.engine.title}" + (f" ({r.variant})" if r.variant else "")]
    lines.append(f"  host namespace {HOST}; uplink {UPLINK} {UPLINK_IP}/{UPLINK_PREFIXLEN}")
    routes = f"routes {CONTAINER_RANGE} to the host"
    lines.append(f"  outside namespace {OUTSIDE} {OUTSIDE_IP}, {routes}")
    for network in NETWORKS:
        net = ipaddress.ip_network(f"{network.gateway}/{network.prefixlen}", strict=False)
        members = ", ".join(f"netns:{name} {ip}" for name, ip in network.members)
        lines.append(f"  {network.bridge} {net}: {network.what}; {members}")
    lines.append("  try: flowtrace rules netns:ftfw-c1 netns:ftfw-c3")
    lines.append("       flowtrace ping netns:ftfw-c1 netns:ftfw-c3")
    lines.append(f"       flowtrace tcp netns:{OUTSIDE} {UPLINK_IP}:8080")
    return lines
