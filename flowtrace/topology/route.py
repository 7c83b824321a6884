"""Two endpoints and the way between them: the first two stages of a trace, joined.

`resolve_route` resolves what the user typed (endpoints), chooses the address to send
to, and walks the kernel's state from the source (topology.path), predicting a
published port's DNAT the way the kernel decides it, and a docker-proxy where no DNAT
applies.  `flowtrace path` prints what it returns; a live run sends along it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flowtrace.endpoints.resolve import resolve, split_port
from flowtrace.errors import ExitStatus, FlowtraceError, NoPathError
from flowtrace.model import Endpoint, Namespace, ProbeKind
from flowtrace.topology.kernel import read_state
from flowtrace.topology.path import LiveView, PathPlan, Redirect, plan_path

if TYPE_CHECKING:
    from flowtrace.topology.proxy import ProxyLeg

# Published ports, docker-proxy and the rule model (topology.published, .proxy,
# .netfilter: 15 ms to import) are imported where a destination port asks for them:
# a ping never does.


@dataclass(frozen=True)
class Route:
    """A resolved pair of endpoints and the path between them."""

    src: Endpoint
    dst: Endpoint
    #: The address and port probes are sent to (before any DNAT on the way).
    dst_ip: str
    dst_port: int | None
    plan: PathPlan
    #: The docker-proxy that will accept the connection (no DNAT applies), else None.
    proxy: ProxyLeg | None = None


def choose_destination_ip(view: LiveView, src: Namespace, dst: Endpoint) -> str:
    """The destination address the source reaches most directly (on-link first)."""
    candidates = [
        a
        for a in dst.addresses
        if ipaddress.ip_address(a).version == 4 and not ipaddress.ip_address(a).is_loopback
    ]
    if dst.ip and dst.spec == dst.ip:
        return dst.ip  # the user named the address
    if not candidates:
        raise NoPathError(f"{dst.spec} has no IPv4 address: only lo")
    for ip in candidates:
        route = view.route(src, ip)
        if route.local or (route.oif is not None and route.gateway is None):
            return ip
    return dst.ip or candidates[0]


def docker_redirect(kind: ProbeKind) -> Redirect:
    """Predict a published port's DNAT: Docker maps host ports to container ports.

    The namespace's nat chains are run as the kernel runs them for the first packet
    (prerouting for one that came in by `in_iface`, output for the namespace's own),
    so what Docker's rules leave out stays out: 127.0.0.0/8 from the host, packets
    from Docker's own bridges (docker-proxy takes those), a binding on another address.
    Any namespace that owns the address is asked (a host of one's own in a namespace
    DNATs too); when the host's rules cannot be read, Docker's bindings are matched.
    """

    def redirect(
        ns: Namespace, ip: str, port: int | None, in_iface: str | None = None
    ) -> tuple[str, int | None, str] | None:
        if port is None or kind == "icmp" or ns.container:
            return None
        from flowtrace.topology.netfilter import read_firewall
        from flowtrace.topology.proxy import binding_target, bindings
        from flowtrace.topology.published import predict_dnat

        is_host = ns.label == "host"
        try:
            local = frozenset(a.ip for a in read_state(ns.path).addresses)
            predicted = predict_dnat(read_firewall(ns.path), kind, ip, port, in_iface, local)
        except FlowtraceError:
            predicted = binding_target(kind, ip, port) if is_host else None
        if predicted is None:
            return None
        target, cport, _ = predicted
        owners = (
            [c.name for c, *_ in bindings(kind, port) if target in c.addresses.values()]
            if is_host
            else []
        )
        by = f"container {owners[0]}" if owners else target
        return target, cport, f"{ip}:{port} is published by {by}: DNAT to {target}:{cport}"

    return redirect


def _loopback_destination(src: Endpoint, dst_spec: str) -> Endpoint | None:
    """`127.0.0.1:PORT`: the source's own loopback (every namespace has one)."""
    name, port = split_port(dst_spec.strip())
    try:
        is_loopback = ipaddress.ip_address(name).is_loopback
    except ValueError:
        return None
    if not is_loopback:
        return None
    return Endpoint(name, src.netns, src.addresses, name, port)


def resolve_route(src_spec: str, dst_spec: str, kind: ProbeKind = "icmp") -> Route:
    """Resolve both endpoints and walk the kernel state between them."""
    view = LiveView()
    src = resolve(src_spec, read_state=view.state)
    dst = _loopback_destination(src, dst_spec) or resolve(
        dst_spec, allow_port=True, read_state=view.state
    )
    if kind in ("tcp", "udp") and dst.port is None:
        raise FlowtraceError(f"{kind} needs a destination port: {dst_spec}:PORT", ExitStatus.USAGE)
    if kind == "icmp" and dst.port is not None:
        raise FlowtraceError(
            f"ping takes no port ({dst_spec}): use flowtrace tcp for ports", ExitStatus.USAGE
        )
    view.know([src.netns, dst.netns])
    dst_ip = choose_destination_ip(view, src.netns, dst)
    plan = plan_path(view, src.netns, dst_ip, dst.port, docker_redirect(kind))
    if plan.src_ip is None:
        plan.src_ip = src.ip
    if not plan.points:
        raise NoPathError(f"no path from {src_spec} to {dst_spec}")
    if plan.redirected is None and plan.destination and plan.dst_port is not None:
        from flowtrace.topology.proxy import unserved_binding

        hint = unserved_binding(kind, plan.dst_ip, plan.dst_port)
        if hint:
            plan.notes.append(hint)
            plan.closed_hint = hint
    proxy = None
    if kind == "tcp" and plan.redirected is None and plan.destination and dst.port is not None:
        from flowtrace.topology.proxy import proxy_leg

        proxy = proxy_leg(view, plan, dst.port)
    mates = (src.netns.container, dst.netns.container)
    if src.netns.inode == dst.netns.inode and all(mates) and mates[0] != mates[1]:
        plan.notes.append(
            f"containers {mates[0]} and {mates[1]} share one network namespace: "
            "the packet never leaves it and crosses only lo"
        )
    return Route(src, dst, dst_ip, dst.port, plan, proxy)


def probe_kind_of(dst: str) -> ProbeKind:
    """`flowtrace path`/`capture` guess: a destination with a port is followed as TCP."""
    return "tcp" if ":" in dst.removeprefix("netns:").removeprefix("pid:") else "icmp"
