"""Two endpoints and the way between them: the first two stages of a trace, joined.

`resolve_route` resolves what the user typed (endpoints), chooses the address to send
to, and walks the kernel's state from the source (topology.path), predicting a
published port's DNAT the way the kernel decides it, and a docker-proxy where no DNAT
applies.  `flowtrace path` prints what it returns; a live run sends along it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowtrace.endpoints.resolve import resolve, split_port
from flowtrace.errors import ExitStatus, FlowtraceError, NoPathError
from flowtrace.model import Address, Endpoint, Namespace, ProbeKind, ip_version
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
    #: Why this address family, in words, when there was a choice (or -4/-6 made it).
    family_reason: str | None = None


#: RFC 6724's default policy table (section 2.1), as (prefix, precedence): getaddrinfo
#: sorts a name's addresses by it, which is the order ping and curl try them in.  A
#: global IPv6 address (40) ranks before IPv4 (35), which ranks before a unique local
#: IPv6 address (fc00::/7, 3), the kind Docker's IPv6 networks are usually given.
_PRECEDENCE = tuple(
    (ipaddress.ip_network(prefix), precedence)
    for prefix, precedence in (
        ("::1/128", 50),
        ("::ffff:0:0/96", 35),
        ("2002::/16", 30),
        ("2001::/32", 5),
        ("fc00::/7", 3),
        ("::/96", 1),
        ("fec0::/10", 1),
        ("3ffe::/16", 1),
        ("::/0", 40),
    )
)
_IPV4_PRECEDENCE = 35
FAMILY_RULE = (
    "without -4 or -6 flowtrace takes the family getaddrinfo ranks first, as ping and curl "
    "do (RFC 6724: a global IPv6 address, then IPv4, then a unique local IPv6 address, "
    "fc00::/7)"
)


def precedence(ip: str) -> int:
    """An address's precedence in RFC 6724's default policy table."""
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        return _IPV4_PRECEDENCE
    best = max(
        ((net.prefixlen, value) for net, value in _PRECEDENCE if address in net), default=(0, 40)
    )
    return best[1]


def _candidates(dst: Endpoint, family: int | None) -> list[str]:
    """The destination's addresses a probe may go to: not loopback, not link-local."""
    found = []
    for a in dst.addresses:
        address = ipaddress.ip_address(a)
        if address.is_loopback or address.is_link_local:
            continue
        if family is None or address.version == family:
            found.append(a)
    return found


@dataclass(frozen=True)
class Destination:
    """The address chosen to send to, and why that family, in words (None: no choice)."""

    ip: str
    reason: str | None = None


def choose_destination(
    view: LiveView, src: Namespace, dst: Endpoint, family: int | None = None
) -> Destination:
    """The address the source sends to: the user's, or the best of the destination's.

    The family is the user's (-4/-6) or, when the destination has both, the one RFC
    6724's precedence ranks first among those the source has a route to; within a
    family the address the source reaches most directly (on-link first).
    """
    if dst.ip and dst.spec == dst.ip:  # the user named the address
        version = ipaddress.ip_address(dst.ip).version
        if family is not None and version != family:
            raise FlowtraceError(
                f"{dst.ip} is an IPv{version} address, but -{family} asks for IPv{family}",
                ExitStatus.USAGE,
            )
        return Destination(dst.ip)
    candidates = _candidates(dst, family)
    if not candidates:
        if family is not None and _candidates(dst, None):
            others = ", ".join(_candidates(dst, None))
            hint = " (Docker gives a container IPv6 only on a network made with --ipv6)"
            raise NoPathError(
                f"{dst.spec} has no IPv{family} address (only {others})"
                + (hint if family == 6 else "")
            )
        raise NoPathError(f"{dst.spec} has no address but loopback and link-local ones")
    routes = {ip: view.route(src, ip) for ip in candidates}

    def usable(ip: str) -> bool:  # RFC 6724 rule 1: avoid unusable destinations
        route = routes[ip]
        return route.local or route.oif is not None

    def direct(ip: str) -> bool:
        route = routes[ip]
        return route.local or (route.oif is not None and route.gateway is None)

    # stable: among equals, the destination's own order (its first IPv4 address first)
    ranked = sorted(
        candidates, key=lambda ip: (usable(ip), precedence(ip), direct(ip)), reverse=True
    )
    chosen = ranked[0]
    versions = {ipaddress.ip_address(ip).version for ip in candidates if usable(ip)}
    reason = None
    if family is None and versions == {4, 6}:
        version = ipaddress.ip_address(chosen).version
        other_version = 6 if version == 4 else 4
        other = next(ip for ip in ranked if ipaddress.ip_address(ip).version == other_version)
        reason = (
            f"IPv{version}: {dst.spec} has {chosen} and {other}; {FAMILY_RULE}; "
            f"-{other_version} for IPv{other_version}"
        )
    elif family is not None:
        reason = f"IPv{family} (-{family})"
    return Destination(chosen, reason)


def docker_redirect(kind: ProbeKind, containers: Callable[[], list[Any]] | None = None) -> Redirect:
    """Predict a published port's DNAT: Docker maps host ports to container ports.

    The namespace's nat chains are run as the kernel runs them for the first packet
    (prerouting for one that came in by `in_iface`, output for the namespace's own),
    so what Docker's rules leave out stays out: 127.0.0.0/8 from the host, packets
    from Docker's own bridges (docker-proxy takes those), a binding on another address.
    Any namespace that owns the address is asked (a host of one's own in a namespace
    DNATs too); when the host's rules cannot be read, Docker's bindings are matched.
    `containers` lists another host's running containers (default: this engine's).
    """

    def redirect(
        ns: Namespace, ip: str, port: int | None, in_iface: str | None = None
    ) -> tuple[str, int | None, str] | None:
        if port is None or kind == "icmp" or ns.container:
            return None
        from flowtrace.topology.netfilter import read_firewall
        from flowtrace.topology.proxy import binding_target, bindings
        from flowtrace.topology.published import predict_dnat

        is_host = ns.is_host  # this host's namespace or another host's (host@hostb)
        try:
            local = frozenset(a.ip for a in read_state(ns.path).addresses)
            ipv6 = ip_version(ip) == 6
            predicted = predict_dnat(read_firewall(ns.path, ipv6), kind, ip, port, in_iface, local)
        except FlowtraceError:
            predicted = binding_target(kind, ip, port, containers) if is_host else None
        if predicted is None:
            return None
        target, cport, _ = predicted
        owners = (
            [c.name for c, *_ in bindings(kind, port, containers) if target in c.all_addresses]
            if is_host
            else []
        )
        by = f"container {owners[0]}" if owners else target
        sent, to = Address(ip, port), Address(target, cport)
        return target, cport, f"{sent} is published by {by}: DNAT to {to}"

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


def resolve_route(
    src_spec: str, dst_spec: str, kind: ProbeKind = "icmp", family: int | None = None
) -> Route:
    """Resolve both endpoints and walk the kernel state between them.

    `family` is 4 or 6 (`-4`/`-6`), None for the destination's best (choose_destination).
    """
    view = LiveView()
    src = resolve(src_spec, read_state=view.state)
    dst = _loopback_destination(src, dst_spec) or resolve(
        dst_spec, allow_port=True, read_state=view.state
    )
    if kind in ("tcp", "udp") and dst.port is None:
        if ":" in dst.spec and not dst.spec.startswith("["):
            raise FlowtraceError(
                f"{kind} needs a destination port: an IPv6 address takes it in brackets, "
                f"[{dst.spec}]:PORT",
                ExitStatus.USAGE,
            )
        raise FlowtraceError(f"{kind} needs a destination port: {dst_spec}:PORT", ExitStatus.USAGE)
    if kind == "icmp" and dst.port is not None:
        raise FlowtraceError(
            f"ping takes no port ({dst_spec}): use flowtrace tcp for ports", ExitStatus.USAGE
        )
    view.know([src.netns, dst.netns])
    chosen = choose_destination(view, src.netns, dst, family)
    dst_ip = chosen.ip
    plan = plan_path(view, src.netns, dst_ip, dst.port, docker_redirect(kind))
    if plan.src_ip is None:
        plan.src_ip = _source_address(src, ip_version(dst_ip))
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
    if src.netns.key == dst.netns.key and all(mates) and mates[0] != mates[1]:
        plan.notes.append(
            f"containers {mates[0]} and {mates[1]} share one network namespace: "
            "the packet never leaves it and crosses only lo"
        )
    return Route(src, dst, dst_ip, dst.port, plan, proxy, chosen.reason)


def _source_address(src: Endpoint, version: int) -> str | None:
    """The source's first address of that family (not loopback, not link-local)."""
    if version == 4:
        return src.ip
    for a in src.addresses:
        address = ipaddress.ip_address(a)
        if address.version == 6 and not (address.is_loopback or address.is_link_local):
            return a
    return None


def probe_kind_of(dst: str) -> ProbeKind:
    """`flowtrace path`/`capture` guess: a destination with a port is followed as TCP."""
    try:
        _, port = split_port(dst.strip())
    except FlowtraceError:
        return "icmp"  # resolving it says what is wrong
    return "tcp" if port is not None else "icmp"
