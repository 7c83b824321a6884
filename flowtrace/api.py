"""The library face: path(), trace(), and (see capture/analyze modules) the rest.

The CLI and notebooks call these with plain values and get model objects back.
Stages run in order: endpoints -> topology -> capture (all sockets ready) -> probe ->
correlate -> NAT attribution; the pcap set is written as probes complete, so an
interrupted trace still leaves a readable set.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flowtrace.capturing import CaptureResult, capture
from flowtrace.errors import ExitStatus, FlowtraceError, NoPathError
from flowtrace.model import Endpoint, Namespace, Point, Trace
from flowtrace.probe import ProbeKind

if TYPE_CHECKING:
    from flowtrace.dns import DnsLookup
    from flowtrace.proxy import ProxyLeg
    from flowtrace.topology.path import LiveView, PathPlan, Redirect

__all__ = [
    "CaptureResult",
    "Route",
    "TraceOptions",
    "capture",
    "dns_lookup",
    "load",
    "path",
    "run_trace",
    "trace",
]


@dataclass(frozen=True)
class TraceOptions:
    """Everything a trace needs to know, converted from CLI flags or notebook arguments."""

    kind: ProbeKind = "icmp"
    count: int = 1
    interval: float = 0.2
    timeout: float = 2.0
    output_dir: Path | None = None  # the pcap set folder; None: captures/<time>-<src>-<dst>/
    record: bool = True  # write a pcap set at all
    command: str = ""
    extra_meta: dict[str, object] = field(default_factory=dict)

    def check(self) -> None:
        if self.count < 1:
            raise FlowtraceError(f"bad count {self.count}: send at least one probe")
        if self.interval < 0:
            raise FlowtraceError(f"bad interval {self.interval}: it cannot be negative")
        if self.timeout <= 0:
            raise FlowtraceError(f"bad timeout {self.timeout}: it must be positive")


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

    The host's nat table is walked as the kernel walks it for the first packet
    (PREROUTING for one that came in by `in_iface`, OUTPUT for the host's own), so
    what Docker's rules leave out stays out: 127.0.0.0/8 from the host, packets from
    Docker's own bridges (docker-proxy takes those), a binding on another address.
    When the rules cannot be read, Docker's bindings are matched instead.
    """

    def redirect(
        ns: Namespace, ip: str, port: int | None, in_iface: str | None = None
    ) -> tuple[str, int | None, str] | None:
        if port is None or kind == "icmp" or ns.label != "host":
            return None
        from flowtrace.proxy import binding_target, bindings
        from flowtrace.topology.kernel import read_state
        from flowtrace.topology.netfilter import read_ruleset
        from flowtrace.topology.published import predict_dnat

        try:
            local = frozenset(a.ip for a in read_state(ns.path).addresses)
            predicted = predict_dnat(read_ruleset(ns.path), kind, ip, port, in_iface, local)
        except FlowtraceError:
            predicted = binding_target(kind, ip, port)
        if predicted is None:
            return None
        target, cport, _ = predicted
        owners = [c.name for c, *_ in bindings(kind, port) if target in c.addresses.values()]
        by = f"container {owners[0]}" if owners else target
        return target, cport, f"{ip}:{port} is published by {by}: DNAT to {target}:{cport}"

    return redirect


def _loopback_destination(src: Endpoint, dst_spec: str) -> Endpoint | None:
    """`127.0.0.1:PORT`: the source's own loopback (every namespace has one)."""
    from flowtrace.endpoints.resolve import split_port

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
    from flowtrace.endpoints.resolve import resolve
    from flowtrace.topology.path import LiveView, plan_path

    src = resolve(src_spec)
    dst = _loopback_destination(src, dst_spec) or resolve(dst_spec, allow_port=True)
    if kind in ("tcp", "udp") and dst.port is None:
        raise FlowtraceError(f"{kind} needs a destination port: {dst_spec}:PORT", ExitStatus.USAGE)
    if kind == "icmp" and dst.port is not None:
        raise FlowtraceError(
            f"ping takes no port ({dst_spec}): use flowtrace tcp for ports", ExitStatus.USAGE
        )
    view = LiveView([src.netns, dst.netns])
    dst_ip = choose_destination_ip(view, src.netns, dst)
    plan = plan_path(view, src.netns, dst_ip, dst.port, docker_redirect(kind))
    if plan.src_ip is None:
        plan.src_ip = src.ip
    if not plan.points:
        raise NoPathError(f"no path from {src_spec} to {dst_spec}")
    if plan.redirected is None and plan.destination and plan.dst_port is not None:
        from flowtrace.proxy import unserved_binding

        hint = unserved_binding(kind, plan.dst_ip, plan.dst_port)
        if hint:
            plan.notes.append(hint)
            plan.closed_hint = hint
    proxy = None
    if kind == "tcp" and plan.redirected is None and plan.destination and dst.port is not None:
        from flowtrace.proxy import proxy_leg

        proxy = proxy_leg(view, plan, dst.port)
    mates = (src.netns.container, dst.netns.container)
    if src.netns.inode == dst.netns.inode and all(mates) and mates[0] != mates[1]:
        plan.notes.append(
            f"containers {mates[0]} and {mates[1]} share one network namespace: "
            "the packet never leaves it and crosses only lo"
        )
    return Route(src, dst, dst_ip, dst.port, plan, proxy)


def path(src: str, dst: str, kind: ProbeKind = "icmp") -> tuple[list[Point], list[str]]:
    """The observation points a packet from src to dst crosses, and notes on the way."""
    route = resolve_route(src, dst, kind)
    notes = list(route.src.notes) + list(route.dst.notes) + route.plan.notes
    return route.plan.points, notes


def trace(
    src: str,
    dst: str,
    kind: ProbeKind = "icmp",
    count: int = 1,
    interval: float = 0.2,
    timeout: float = 2.0,
    output_dir: str | Path | None = None,
    record: bool = True,
    on_probe: Callable[[int], None] | None = None,
) -> Trace:
    """Send `count` marked probes from src to dst and follow each one hop by hop."""
    options = TraceOptions(
        kind=kind,
        count=count,
        interval=interval,
        timeout=timeout,
        output_dir=Path(output_dir) if output_dir is not None else None,
        record=record,
        command=f"flowtrace {'ping' if kind == 'icmp' else kind} {src} {dst}",
    )
    return run_trace(src, dst, options, on_probe)


def run_trace(
    src: str, dst: str, options: TraceOptions, on_probe: Callable[[int], None] | None = None
) -> Trace:
    from flowtrace.tracer import Tracer

    options.check()
    route = resolve_route(src, dst, options.kind)
    tracer = Tracer(route, options)
    return tracer.run(on_probe)


def load(path: str | Path | Sequence[str | Path]) -> Trace:
    """Open a recorded pcap set (a folder, a pcapng, or several pcap files) as a Trace."""
    from flowtrace.analyze import analyze

    return analyze(path).trace


def dns_lookup(
    src: str,
    name: str,
    qtype: str = "A",
    server: str | None = None,
    timeout: float = 2.0,
    output_dir: str | Path | None = None,
    record: bool = True,
) -> DnsLookup:
    """Look `name` up from `src` as its resolver would and follow the query and the answer."""
    from flowtrace.dns import lookup

    return lookup(src, name, qtype, server, timeout, output_dir, record)
