"""Turn what the user typed into an Endpoint: a namespace and the addresses it owns.

Accepted forms: a container name or id, `host`, `netns:NAME`, `pid:N`, an IPv4 or
IPv6 address; any of them may carry `:PORT` (``c2:80``, ``203.0.113.1:8080``), an IPv6
address in brackets as URLs write it (``[fd00::3]:80``; ``[fd00::3]`` is the address).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from flowtrace.endpoints.netns import HOST_NETNS, netns_inode
from flowtrace.errors import (
    DockerUnavailableError,
    ExitStatus,
    FlowtraceError,
    NotFoundError,
    NotRootError,
)
from flowtrace.model import Endpoint, Namespace

if TYPE_CHECKING:
    from flowtrace.topology.kernel import NetnsState

#: Reads a namespace's links and addresses (topology.kernel's, or a caller's cache of it).
StateReader = Callable[[Namespace], "NetnsState"]

NETNS_RUN_DIR = "/run/netns"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _port_number(tail: str, spec: str) -> int:
    if not tail.isdigit() or not 0 < int(tail) < 65536:
        raise FlowtraceError(
            f"bad port {tail!r} in {spec!r}: give a number from 1 to 65535", ExitStatus.USAGE
        )
    return int(tail)


def split_port(spec: str) -> tuple[str, int | None]:
    """`c2:80` -> ("c2", 80); `[fd00::3]:80` -> ("fd00::3", 80); `netns:x`, `pid:4` and a
    bare IPv6 address keep their colons."""
    if spec.startswith("["):
        address, bracket, rest = spec[1:].partition("]")
        if not bracket or not _is_ip(address) or ":" not in address:
            raise FlowtraceError(
                f"cannot read {spec!r}: brackets hold an IPv6 address, as in [fd00::3]:80",
                ExitStatus.USAGE,
            )
        if not rest:
            return address, None
        if not rest.startswith(":"):
            raise FlowtraceError(
                f"cannot read {spec!r}: after [{address}] comes :PORT", ExitStatus.USAGE
            )
        return address, _port_number(rest[1:], spec)
    head, sep, tail = spec.rpartition(":")
    if not sep or head in ("netns", "pid") or not head:
        return spec, None
    if head.startswith(("netns:", "pid:")) or head.count(":") == 0:
        return head, _port_number(tail, spec)
    return spec, None  # an IPv6 address: a port needs the brackets


def _require_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError("flowtrace needs root to enter namespaces and capture: run it with sudo")


def host_namespace() -> Namespace:
    return Namespace(HOST_NETNS, "host", netns_inode(HOST_NETNS))


def _named_netns(name: str) -> Namespace:
    path = os.path.join(NETNS_RUN_DIR, name)
    if not name or "/" in name or not os.path.exists(path):
        raise NotFoundError(f"no network namespace named {name!r} under {NETNS_RUN_DIR}")
    if os.stat(path).st_dev != os.stat(HOST_NETNS).st_dev:  # `ip netns add` not done yet
        raise NotFoundError(f"{path} is not (yet) a network namespace")
    return Namespace(path, name, netns_inode(path))


def _pid_netns(pid_text: str) -> Namespace:
    if not pid_text.isdigit():
        raise FlowtraceError(f"bad process id {pid_text!r}: pid:N takes a number", ExitStatus.USAGE)
    path = f"/proc/{int(pid_text)}/ns/net"
    if not os.path.exists(f"/proc/{int(pid_text)}"):
        raise NotFoundError(f"no process with pid {pid_text}")
    ns = Namespace(path, f"pid:{pid_text}", netns_inode(path))
    return label_namespace(ns)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def named_namespaces(with_docker: bool = True) -> list[Namespace]:
    """Host, each /run/netns entry and each running container's namespace (no duplicates)."""
    seen: dict[int, Namespace] = {}
    host = host_namespace()
    seen[host.inode] = host
    if os.path.isdir(NETNS_RUN_DIR):
        for name in sorted(os.listdir(NETNS_RUN_DIR)):
            try:
                ns = _named_netns(name)
            except (NotFoundError, FlowtraceError):
                continue
            seen.setdefault(ns.inode, ns)
    if with_docker:
        from flowtrace.endpoints.docker import docker_available, running_containers

        try:
            containers = running_containers() if docker_available() else []
        except DockerUnavailableError:
            containers = []  # names only: the namespaces themselves are all found above
        for c in containers:
            if not c.pid:
                continue
            path = f"/proc/{c.pid}/ns/net"
            try:
                inode = netns_inode(path)
            except NotFoundError:
                continue
            if inode in seen and seen[inode].container is None and seen[inode].label != "host":
                seen[inode] = Namespace(path, c.name, inode, c.name)
            seen.setdefault(inode, Namespace(path, c.name, inode, c.name))
    return list(seen.values())


def all_namespaces(with_docker: bool = True) -> list[Namespace]:
    """named_namespaces() plus any other namespace a process holds (pid:N labels)."""
    found = {ns.inode: ns for ns in named_namespaces(with_docker)}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        path = f"/proc/{entry}/ns/net"
        try:
            inode = os.stat(path).st_ino
        except OSError:
            continue
        found.setdefault(inode, Namespace(path, f"pid:{entry}", inode))
    return list(found.values())


def label_namespace(ns: Namespace) -> Namespace:
    """Give a pid:N namespace its better name when it is the host, a netns or a container."""
    for known in named_namespaces():
        if known.inode == ns.inode:
            return known
    return ns


def resolve(
    spec: str, *, allow_port: bool = False, read_state: StateReader | None = None
) -> Endpoint:
    """Resolve one endpoint as the user typed it (`read_state`: a cache the caller keeps,
    so a namespace read here is not read again for the path)."""
    _require_root()
    name, port = split_port(spec.strip())
    if port is not None and not allow_port:
        raise FlowtraceError(
            f"{spec!r}: a port only makes sense for tcp/udp destinations", ExitStatus.USAGE
        )
    notes: tuple[str, ...] = ()
    if not name:
        raise FlowtraceError(
            "empty endpoint: give a container, host, netns:NAME, pid:N or an IP", ExitStatus.USAGE
        )
    if "@" in name:
        raise FlowtraceError(
            f"{spec!r} is on another host: ping, tcp, udp and path follow packets across hosts; "
            "this command works on this host only",
            ExitStatus.USAGE,
        )
    if name == "host":
        ns = host_namespace()
    elif name.startswith("netns:"):
        ns = _named_netns(name.split(":", 1)[1])
    elif name.startswith("pid:"):
        ns = _pid_netns(name.split(":", 1)[1])
    elif _is_ip(name):
        return resolve_ip(name, port=port)
    elif _NAME_RE.match(name):
        from flowtrace.endpoints.docker import container_netns

        info, path, note_list = container_netns(name)
        ns = Namespace(path, info.name, netns_inode(path), info.name)
        notes = tuple(note_list)
        if info.network_mode == "host":
            ns = replace(host_namespace(), container=info.name)
    else:
        raise FlowtraceError(
            f"cannot read endpoint {spec!r}: give a container, host, netns:NAME, pid:N or an IP",
            ExitStatus.USAGE,
        )
    addresses = _addresses(ns, read_state)
    return Endpoint(spec, ns, addresses, _primary(addresses), port, notes)


def _addresses(ns: Namespace, read_state: StateReader | None) -> tuple[str, ...]:
    if read_state is None:
        from flowtrace.topology import kernel

        state = kernel.read_state(ns.path)
    else:
        state = read_state(ns)
    return tuple(a.ip for a in state.addresses)


def _primary(addresses: tuple[str, ...]) -> str | None:
    for ip in addresses:
        addr = ipaddress.ip_address(ip)
        if addr.version == 4 and not addr.is_loopback:
            return ip
    return None


def resolve_ip(ip: str, *, port: int | None = None) -> Endpoint:
    """The namespace that owns an address: host, a named netns or a container."""
    from flowtrace.topology.kernel import read_state

    for ns in named_namespaces():
        try:
            state = read_state(ns.path)
        except NotFoundError:  # removed since it was listed (another program's namespace)
            continue
        if state.owns(ip) and not ipaddress.ip_address(ip).is_loopback:
            addresses = tuple(a.ip for a in state.addresses)
            return Endpoint(ip, ns, addresses, ip, port)
    raise NotFoundError(
        f"no namespace on this machine owns {ip}: flowtrace traces between namespaces it can "
        "enter (containers, host, netns:NAME, pid:N)"
    )
