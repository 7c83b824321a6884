"""Endpoints on another host: `c2@hostb`, `host@hostb`, `netns:NAME@hostb`, `pid:N@hostb`.

The host's engine (its own client) names the containers and their processes; the agent
there (endpoints.helper) reads their namespaces.  A namespace is named
"HOST:/proc/PID/ns/net" (endpoints.netns runs what is asked of it on that host), its
label carries the host (`c2@hostb`), and so does every point in it (`c2@hostb/eth0`).
Besides the host's own namespace and its containers', a host has the namespaces dockerd
keeps under its exec-root that no process holds (an overlay network's sandbox
`1-<network id>`, with the network's bridge and VXLAN device): reached through dockerd's
root (/proc/DOCKERD_PID/root), labelled `overlay:NETWORK@hostb`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from flowtrace.endpoints.docker import ContainerNet, container_facts
from flowtrace.endpoints.hostfacts import in_root, inodes, sandboxes
from flowtrace.endpoints.hosts import RemoteHost
from flowtrace.endpoints.netns import on_host
from flowtrace.errors import ExitStatus, FlowtraceError, NoPathError, NotFoundError, NotRunningError
from flowtrace.model import Endpoint, Namespace
from flowtrace.topology.kernel import read_state

#: Overlay sandboxes are named 1-<the first 10 characters of the network's id>.
OVERLAY_PREFIX = "1-"


@dataclass(frozen=True)
class HostNetwork:
    """One of the engine's networks, as the trace names overlays and their VNIs."""

    id: str
    name: str
    driver: str
    vnis: tuple[int, ...] = ()
    encrypted: bool = False
    attachable: bool = False


def networks(host: RemoteHost) -> list[HostNetwork]:
    """The engine's networks (overlays with their VXLAN ids, from the engine's options)."""
    found = []
    for attrs in host.client.api.networks():
        options = attrs.get("Options") or {}
        vnis = tuple(
            int(v)
            for v in str(options.get("com.docker.network.driver.overlay.vxlanid_list", "")).split(
                ","
            )
            if v.strip().isdigit()
        )
        found.append(
            HostNetwork(
                str(attrs.get("Id", "")),
                str(attrs.get("Name", "")),
                str(attrs.get("Driver", "")),
                vnis,
                "encrypted" in options,
                bool(attrs.get("Attachable")),
            )
        )
    return found


def _containers(host: RemoteHost) -> list[ContainerNet]:
    api = host.client.api
    return [container_facts(api.inspect_container(c["Id"])) for c in api.containers()]


def host_namespace(host: RemoteHost) -> Namespace:
    path = host.netns_path
    return Namespace(path, f"host@{host.name}", _inode_of(host, path))


def _inode_of(host: RemoteHost, path: str) -> int:
    local = path.split(":", 1)[1]
    found = host.agent.call(None, inodes, ([local],))
    if not found or not found[0]:
        raise NotFoundError(f"network namespace {local} on host {host.name} does not exist")
    return int(found[0])


def sandbox_label(name: str, known: list[HostNetwork]) -> str | None:
    """How a namespace under dockerd's exec-root is called: `overlay:NETWORK` for an
    overlay's sandbox, None for a container's own (found under its name already)."""
    if name.startswith(OVERLAY_PREFIX):
        prefix = name[len(OVERLAY_PREFIX) :]
        for network in known:
            if prefix and network.id.startswith(prefix):
                return f"overlay:{network.name}"
        return f"sandbox:{name}"
    if name.startswith("lb_"):
        prefix = name[3:]
        for network in known:
            if prefix and network.id.startswith(prefix):
                return f"lb:{network.name}"
    if name == "ingress_sbox":
        return "ingress-sbox"
    return None


def host_namespaces(host: RemoteHost) -> list[Namespace]:
    """The host's own namespace, its running containers', and dockerd's sandboxes."""
    own = host_namespace(host)
    found: dict[int, Namespace] = {own.inode: own}
    running = [c for c in _containers(host) if c.running and c.pid and c.network_mode != "host"]
    paths = [f"/proc/{c.pid}/ns/net" for c in running]
    for container, path, inode in zip(
        running, paths, host.agent.call(None, inodes, (paths,)), strict=True
    ):
        if inode:
            label = f"{container.name}@{host.name}"
            found.setdefault(
                inode, Namespace(on_host(host.name, path), label, inode, container.name)
            )
    pid, exec_root = host.engine_pid, host.facts.get("exec_root")
    if pid and exec_root:
        known = networks(host)
        for name, path, inode in host.agent.call(None, sandboxes, (pid, exec_root)):
            called = sandbox_label(name, known)
            if called is None or inode in found:
                continue
            found[inode] = Namespace(on_host(host.name, path), f"{called}@{host.name}", inode)
    return list(found.values())


def _addresses(ns: Namespace) -> tuple[str, ...]:
    return tuple(a.ip for a in read_state(ns.path).addresses)


def _primary(addresses: tuple[str, ...]) -> str | None:
    for ip in addresses:
        addr = ipaddress.ip_address(ip)
        if addr.version == 4 and not addr.is_loopback:
            return ip
    return None


def _container(host: RemoteHost, name: str) -> ContainerNet:
    from docker.errors import APIError, NotFound

    try:
        attrs = host.client.api.inspect_container(name)
    except NotFound:
        raise NotFoundError(f"no container named {name!r} on host {host.name}") from None
    except APIError as exc:
        raise FlowtraceError(
            f"host {host.name}'s engine refused to inspect {name!r}: {exc}"
        ) from None
    info = container_facts(attrs)
    if not info.running:
        raise NotRunningError(
            f"container {info.name} on host {host.name} is {info.status}, not running: start it "
            f"with `docker --context {host.name} start {info.name}` (or -H {host.spec.url})"
        )
    if info.network_mode == "none":
        raise NoPathError(
            f"container {info.name} on host {host.name} has network mode none: no interface but lo"
        )
    return info


def resolve_on(host: RemoteHost, name: str, port: int | None, spec: str) -> Endpoint:
    """One endpoint on `host`: a container, `host`, `netns:NAME`, `pid:N` or an address."""
    notes: tuple[str, ...] = ()
    if name == "host":
        ns = host_namespace(host)
    elif name.startswith("netns:"):
        ns = _named_netns(host, name.split(":", 1)[1])
    elif name.startswith("pid:"):
        text = name.split(":", 1)[1]
        if not text.isdigit():
            raise FlowtraceError(f"bad process id {text!r} in {spec!r}", ExitStatus.USAGE)
        path = on_host(host.name, f"/proc/{int(text)}/ns/net")
        ns = Namespace(path, f"{name}@{host.name}", _inode_of(host, path))
    elif _is_ip(name):
        return resolve_ip_on(host, name, port, spec)
    else:
        info = _container(host, name)
        if info.network_mode == "host":
            ns = Namespace(
                host.netns_path, f"host@{host.name}", host_namespace(host).inode, info.name
            )
            notes = (f"{info.name} on {host.name} uses network mode host: the host's namespace",)
        else:
            path = on_host(host.name, f"/proc/{info.pid}/ns/net")
            ns = Namespace(path, f"{info.name}@{host.name}", _inode_of(host, path), info.name)
    addresses = _addresses(ns)
    return Endpoint(spec, ns, addresses, _primary(addresses), port, notes)


def _named_netns(host: RemoteHost, name: str) -> Namespace:
    """`netns:NAME@HOST`: /run/netns/NAME there, or a sandbox under dockerd's exec-root."""
    for ns in host_namespaces(host):
        if ns.base_label in (f"overlay:{name}", f"sandbox:{name}", name):
            return ns
    pid = host.engine_pid
    if pid is None or not name or "/" in name:
        raise NotFoundError(f"no network namespace named {name!r} on host {host.name}")
    local = host.agent.call(None, in_root, (pid, f"/run/netns/{name}"))
    path = on_host(host.name, local)
    return Namespace(path, f"netns:{name}@{host.name}", _inode_of(host, path))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def owner_on(host: RemoteHost, ip: str) -> Namespace | None:
    """The namespace of `host` that owns an address, host's own first."""
    for ns in host_namespaces(host):
        if read_state(ns.path).owns(ip):
            return ns
    return None


def resolve_ip_on(host: RemoteHost, ip: str, port: int | None, spec: str) -> Endpoint:
    ns = owner_on(host, ip)
    if ns is None or ipaddress.ip_address(ip).is_loopback:
        raise NotFoundError(f"no namespace on host {host.name} owns {ip}")
    return Endpoint(spec, ns, _addresses(ns), ip, port)


def engine_containers(host: RemoteHost) -> list[ContainerNet]:
    """The host's running containers (for naming who publishes a port there)."""
    return [c for c in _containers(host) if c.running]


def container_ports(host: RemoteHost) -> list[tuple[ContainerNet, Any]]:
    return [(c, c.ports) for c in engine_containers(host)]
