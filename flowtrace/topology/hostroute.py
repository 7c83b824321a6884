"""Two endpoints on different hosts and the way between them: resolve_route across hosts.

What the user typed is resolved where it lives: `c1@hosta` by hosta's engine and agent
(endpoints.remote), `c1` on the current engine.  Each host taking part is a
topology.crossing.HostPart over a KernelView of its own (`RemoteView`: the host's own
namespace, its containers', dockerd's sandboxes; all read through the agent), and the
walk goes from the source's host to wherever the packet's next hops lead.  A
destination given as an address is found the same way: the host whose namespace owns
it is the one the walk reaches (the hosts named in the trace and with --host first,
then Docker contexts whose engine is a swarm node at that address).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from flowtrace.endpoints.host_spec import split_host
from flowtrace.endpoints.hosts import HostSet, RemoteHost
from flowtrace.endpoints.remote import (
    engine_containers,
    host_namespaces,
    networks,
    resolve_on,
)
from flowtrace.endpoints.resolve import resolve, split_port
from flowtrace.errors import ExitStatus, FlowtraceError, NoPathError
from flowtrace.model import Endpoint, Namespace, ProbeKind
from flowtrace.topology.crossing import HostPart, TunnelHop, plan_across
from flowtrace.topology.kernel import Link, NetnsState, read_states
from flowtrace.topology.overlay import VxlanFacts, vtep_for, vxlan_facts
from flowtrace.topology.path import LiveView, PathPlan
from flowtrace.topology.route import Route, choose_destination, docker_redirect

#: How many hosts found by their address (Docker contexts) a walk may add.
MAX_FOUND_HOSTS = 4


@dataclass(frozen=True)
class HostRoute(Route):
    """A route whose points are on several hosts."""

    #: The hosts it crosses, in order of first appearance (None: this host).
    hosts: tuple[str | None, ...] = ()
    tunnels: tuple[TunnelHop, ...] = ()


class RemoteView(LiveView):
    """A KernelView of another host: its own namespace, its running containers' and
    dockerd's sandboxes (found by its engine and agent), read through the agent."""

    def __init__(self, host: RemoteHost, known: list[Namespace] | None = None) -> None:
        super().__init__([ns for ns in known or [] if ns.host == host.name])
        self.host = host

    def namespaces(self) -> list[Namespace]:
        if self._namespaces is None:
            ordered: dict[int, Namespace] = {}
            for ns in [*host_namespaces(self.host), *self._known]:
                ordered.setdefault(ns.inode, ns)
            self._namespaces = list(ordered.values())
            # Every state at once, in one call: the walk and the owner lookups read most.
            for ns, state in zip(
                self._namespaces, read_states([ns.path for ns in self._namespaces]), strict=True
            ):
                if state is not None:
                    self._states[ns.inode] = state
        return self._namespaces

    def state(self, ns: Namespace) -> NetnsState:
        self.namespaces()  # the first look reads every state in one call
        return super().state(ns)

    def named(self, ns: Namespace) -> Namespace:
        for known in [*self._known, *self.namespaces()]:
            if known.key == ns.key:
                return known
        return ns

    def nsid(self, ns: Namespace, target: Namespace) -> int | None:
        if ns.host != target.host:
            return None
        return super().nsid(ns, target)


class _LocalView(LiveView):
    def nsid(self, ns: Namespace, target: Namespace) -> int | None:
        if ns.host != target.host:
            return None
        return super().nsid(ns, target)


def _vxlan(ns: Namespace, link: Link) -> VxlanFacts | None:
    return vxlan_facts(ns.path, link.index)


def _vtep(ns: Namespace, link: Link, ip: str) -> tuple[str, str] | None:
    return vtep_for(ns.path, link.index, ip)


def remote_part(host: RemoteHost, kind: ProbeKind, known: list[Namespace]) -> HostPart:
    overlays = {vni: (net.name, net.encrypted) for net in networks(host) for vni in net.vnis}
    return HostPart(
        host.name,
        RemoteView(host, known),
        docker_redirect(kind, lambda: engine_containers(host)),
        _vxlan,
        _vtep,
        overlays,
    )


def local_part(kind: ProbeKind, known: list[Namespace]) -> HostPart:
    return HostPart(
        None, _LocalView([ns for ns in known if ns.host is None]), docker_redirect(kind)
    )


def resolve_endpoint(spec: str, hosts: HostSet, *, allow_port: bool) -> Endpoint | None:
    """An endpoint as typed; None for a bare address whose host the walk will find."""
    name, port = split_port(spec.strip())
    if port is not None and not allow_port:
        raise FlowtraceError(
            f"{spec!r}: a port only makes sense for tcp/udp destinations", ExitStatus.USAGE
        )
    base, host_name = split_host(name)
    if host_name is None:
        if _is_ip(base):
            return None
        return resolve(spec, allow_port=allow_port)
    return resolve_on(hosts.connect(host_name), base, port, spec)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass
class _Parts:
    """The hosts a walk may reach, made as they are needed."""

    kind: ProbeKind
    known: list[Namespace]
    hosts: HostSet
    parts: list[HostPart] = field(default_factory=list)

    def of(self, name: str | None) -> HostPart:
        for part in self.parts:
            if part.name == name:
                return part
        made = (
            local_part(self.kind, self.known)
            if name is None
            else remote_part(self.hosts.connect(name), self.kind, self.known)
        )
        self.parts.append(made)
        return made


IPV6_ACROSS = (
    "IPv6 across hosts is not traced: a trace that names another host (NAME@HOST, --host) "
    "sends IPv4 only; leave out -6 or trace IPv6 on one host"
)


def refuse_ipv6_across(family: int | None) -> None:
    """Across hosts the probes are IPv4: -6 (or an IPv6 address) is refused in one line."""
    if family == 6:
        raise FlowtraceError(IPV6_ACROSS, ExitStatus.USAGE)


def resolve_host_route(src_spec: str, dst_spec: str, kind: ProbeKind, hosts: HostSet) -> HostRoute:
    """Resolve both endpoints, each on its host, and walk from one to the other."""
    named = [split_host(split_port(spec.strip())[0])[1] for spec in (src_spec, dst_spec)]
    hosts.connect_all([n for n in named if n is not None] + hosts.known_names())
    src = resolve_endpoint(src_spec, hosts, allow_port=False)
    if src is None:
        src = resolve(src_spec)  # a bare address of this host
    dst = resolve_endpoint(dst_spec, hosts, allow_port=True)
    name, port = split_port(dst_spec.strip())
    dst_port = dst.port if dst is not None else port
    if kind in ("tcp", "udp") and dst_port is None:
        raise FlowtraceError(f"{kind} needs a destination port: {dst_spec}:PORT", ExitStatus.USAGE)
    if kind == "icmp" and dst_port is not None:
        raise FlowtraceError(
            f"ping takes no port ({dst_spec}): use flowtrace tcp for ports", ExitStatus.USAGE
        )
    known = [src.netns] + ([dst.netns] if dst is not None else [])
    parts = _Parts(kind, known, hosts)
    source = parts.of(src.netns.host)
    if dst is not None:
        parts.of(dst.netns.host)
        if dst.ip and dst.spec == dst.ip:
            refuse_ipv6_across(6 if ":" in dst.ip else None)
        # across hosts the probes are IPv4 (the crossing walk and the agents read IPv4 state)
        dst_ip = choose_destination(source.view, src.netns, dst, 4).ip  # type: ignore[arg-type]
    else:
        dst_ip = split_host(name)[0]
        refuse_ipv6_across(6 if ":" in dst_ip else None)
    for alias in hosts.known_names():
        parts.of(alias)
    for _ in range(MAX_FOUND_HOSTS + 1):
        crossing = plan_across(parts.parts, source, src.netns, dst_ip, dst_port)
        plan, tunnels = crossing.plan, crossing.tunnels
        missing = crossing.unknown
        found = hosts.find_by_address(missing) if missing else None
        if found is None or any(p.name == found for p in parts.parts):
            break
        parts.of(found)
    if crossing.unknown is not None and plan.destination is None:
        # Where the packet would go no host of the trace can see: nothing is sent there.
        raise NoPathError(
            f"the path from {src_spec} to {dst_spec} leaves "
            + (f"{plan.points[-1].id}" if plan.points else src_spec)
            + f" towards {crossing.unknown}, which belongs to no host this trace knows ("
            + ", ".join(p.label for p in parts.parts)
            + "): name that host with --host ALIAS=URL or in an endpoint NAME@HOST"
        )
    if plan.src_ip is None:
        plan.src_ip = src.ip
    if not plan.points:
        raise NoPathError(f"no path from {src_spec} to {dst_spec}")
    if dst is None:
        dst = _reached(plan, dst_spec, dst_ip, dst_port)
    order: list[str | None] = []
    for point in plan.points:
        if point.netns.host not in order:
            order.append(point.netns.host)
    return HostRoute(
        src, dst, dst_ip, dst_port, plan, None, hosts=tuple(order), tunnels=tuple(tunnels)
    )


def _reached(plan: PathPlan, spec: str, ip: str, port: int | None) -> Endpoint:
    """The endpoint a bare address turned out to be: the namespace the walk arrived in."""
    for point in plan.points:
        if point.id == plan.destination:
            return Endpoint(spec, point.netns, point.addresses, ip, port)
    return Endpoint(spec, Namespace("", ip), (ip,), ip, port)


__all__ = ["HostRoute", "RemoteView", "resolve_host_route"]
