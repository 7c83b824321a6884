"""Walk the kernel's real state from a source namespace to a destination address.

The walk asks the same questions the kernel answers when it forwards a packet: which
interface does the route leave by, where is that veth's peer, which bridge is the peer
enslaved to, which bridge port leads to the next hop, does this namespace own the
address (and does a published port redirect it).  A macvlan child sends through its
parent (lower) device, which may live in another namespace; frames arriving on a
parent go to the child that owns the address.  The macvlan driver never passes frames
between a child and its own parent's namespace: the walk says so (`PathPlan.blocked`)
instead of pretending the packet arrives.  It reads state through a
`KernelView`, so it is pure logic: tests give it recorded states.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

from flowtrace.endpoints.podman import is_podman_netns_name
from flowtrace.endpoints.resolve import all_namespaces, host_namespace, label_namespace
from flowtrace.endpoints.userspace import carrier_note, carrier_of
from flowtrace.errors import NoPathError, NotFoundError
from flowtrace.model import Namespace, Point
from flowtrace.topology.kernel import (
    RTN_BLACKHOLE,
    RTN_PROHIBIT,
    RTN_UNREACHABLE,
    Link,
    NetnsState,
    Route,
    nsid_of,
    read_state,
    route_get,
)

MAX_HOPS = 16


class KernelView(Protocol):
    """What the walk needs to know about the machine."""

    def namespaces(self) -> list[Namespace]: ...

    def state(self, ns: Namespace) -> NetnsState: ...

    def route(self, ns: Namespace, dst: str) -> Route: ...

    def nsid(self, ns: Namespace, target: Namespace) -> int | None: ...

    def named(self, ns: Namespace) -> Namespace:
        """The same namespace under its best name (a container's, a netns's)."""
        ...


class Redirect(Protocol):
    """(namespace that owns the address, address, port, the interface the packet came in
    by there, None for the namespace's own packets) -> (new address, new port, why) or None.
    """

    def __call__(
        self, ns: Namespace, ip: str, port: int | None, in_iface: str | None = None
    ) -> tuple[str, int | None, str] | None: ...


@dataclass(frozen=True)
class Blocked:
    """Why a packet cannot arrive although every route says it can."""

    #: In words, with the fix.
    why: str
    #: The on-link address the sender asks for (ARP, NDP) and never gets an answer about.
    neighbor: str


@dataclass(frozen=True)
class Exit:
    """Where a walk left the namespaces it can see: the device a frame went out of (a
    host's uplink, a bridge none of whose ports leads on), the address it was sent to
    (the next hop: a gateway or the destination), and the note that said so.

    On one host that is where the path ends; across hosts (topology.crossing) it is where
    the next host's part begins.
    """

    netns: Namespace
    link: Link
    next_hop: str
    note: str


@dataclass
class PathPlan:
    """The observation points a packet from src to dst will cross, in order."""

    points: list[Point] = field(default_factory=list)
    src_ip: str | None = None
    dst_ip: str = ""
    dst_port: int | None = None
    #: (address, port) the probe is sent to when a published port's DNAT rewrote it on
    #: the way (the plan's dst_ip/dst_port are then the rewritten ones), else None.
    redirected: tuple[str, int | None] | None = None
    #: The DNAT happened in the source namespace's nat OUTPUT, before any point.
    dnat_at_source: bool = False
    #: Why the destination is expected to refuse (a port published on another address).
    closed_hint: str | None = None
    #: Where the walk ended when it reached the destination (None: it did not).
    destination: str | None = None
    notes: list[str] = field(default_factory=list)
    #: Set when the kernel's state says the packet cannot arrive (macvlan isolation).
    blocked: Blocked | None = None
    #: Where the walk left what it can see (None: it arrived, or it was stopped).
    exit: Exit | None = None
    #: The address the source resolves (ARP, NDP) to send: its gateway, or the
    #: destination itself when it is on-link.  None when the packet stays in the source.
    first_hop: str | None = None

    def add(self, ns: Namespace, link: Link, state: NetnsState, role: str) -> Point:
        point_id = f"{ns.label}/{link.name}"
        for existing in self.points:
            if existing.id == point_id:
                return existing
        point = Point(
            id=point_id,
            netns=ns,
            ifname=link.name,
            ifindex=link.index,
            role=role,
            promisc=link.kind == "bridge",
            linktype=1,
            mac=link.mac,
            addresses=state.addresses_of(link.index),
        )
        self.points.append(point)
        return point

    def set_role(self, point_id: str, role: str) -> None:
        self.points = [replace(p, role=role) if p.id == point_id else p for p in self.points]


def find_peer(view: KernelView, ns: Namespace, veth: Link) -> tuple[Namespace, Link] | None:
    """The other end of a veth pair: IFLA_LINK plus the namespace IFLA_LINK_NETNSID names.

    Candidates come in view order (host first) and the first whose link at the peer
    index points back at us, and whose netns id (as `ns` numbers it) is the one the
    veth names, is the peer: exact, and usually found on the first namespace read.
    """
    if veth.peer_index is None:
        return None
    if veth.peer_nsid is None:
        candidates = [ns]
    else:
        candidates = [c for c in view.namespaces() if c.inode != ns.inode]
    for cand in candidates:
        link = view.state(cand).link(veth.peer_index)
        if link is None or link.kind != "veth" or link.peer_index != veth.index:
            continue
        if veth.peer_nsid is None or view.nsid(ns, cand) == veth.peer_nsid:
            return view.named(cand), link
    return None


def find_bridge_port(
    view: KernelView, ns: Namespace, bridge: Link, target_ip: str
) -> tuple[Link, Namespace, Link] | None:
    """The bridge port whose far end owns target_ip: (port, far namespace, far link).

    Looks from the far side first: the namespace that owns the address (usually a
    known endpoint, early in view.namespaces()) names its veth's peer index, which
    is one of the ports; only if that fails is every port's peer looked up.
    """
    state = view.state(ns)
    ports = {port.index: port for port in state.ports_of(bridge.index) if port.kind == "veth"}
    for cand in view.namespaces():
        if cand.inode == ns.inode:
            continue
        far = view.state(cand)
        if not far.owns(target_ip):
            continue
        for link in far.links:
            port = ports.get(link.peer_index or -1) if link.kind == "veth" else None
            if port is not None and port.peer_index == link.index:
                return port, view.named(cand), link
    for port in ports.values():
        peer = find_peer(view, ns, port)
        if peer is not None and view.state(peer[0]).owns(target_ip):
            return port, peer[0], peer[1]
    return None


def find_lower(view: KernelView, ns: Namespace, child: Link) -> tuple[Namespace, Link] | None:
    """A macvlan's parent (lower) device: IFLA_LINK in the namespace IFLA_LINK_NETNSID names."""
    if child.peer_index is None:
        return None
    if child.peer_nsid is None:
        link = view.state(ns).link(child.peer_index)
        return (ns, link) if link is not None else None
    for cand in view.namespaces():
        if cand.inode == ns.inode:
            continue
        link = view.state(cand).link(child.peer_index)
        if link is not None and view.nsid(ns, cand) == child.peer_nsid:
            return view.named(cand), link
    return None


def _owner(view: KernelView, ip: str) -> tuple[Namespace, Link] | None:
    """The first namespace (in view order) that owns ip, and the link it is on."""
    for cand in view.namespaces():
        state = view.state(cand)
        for address in state.addresses:
            link = state.link(address.index) if address.ip == ip else None
            if link is not None and link.arptype != 772:
                return cand, link
    return None


def _is_child_of(
    view: KernelView, ns: Namespace, link: Link, lower_ns: Namespace, lower: Link
) -> bool:
    """Whether `link` in ns is a macvlan whose parent is `lower` in lower_ns."""
    if link.kind != "macvlan" or link.peer_index != lower.index:
        return False
    if ns.inode == lower_ns.inode:
        return link.peer_nsid is None
    return link.peer_nsid is not None and view.nsid(ns, lower_ns) == link.peer_nsid


def macvlan_child_owning(
    view: KernelView, lower_ns: Namespace, lower: Link, ip: str
) -> tuple[Namespace, Link] | None:
    """The macvlan child of `lower` that owns ip, if the owner of ip is one."""
    owner = _owner(view, ip)
    if owner is None or not _is_child_of(view, owner[0], owner[1], lower_ns, lower):
        return None
    return view.named(owner[0]), owner[1]


_SHIM = (
    'the usual fix is a macvlan "shim" interface in {ns} on {lower} '
    "(`ip link add NAME link {lower} type macvlan mode bridge`, an address, and a route "
    "to the containers through it), so {ns} talks to them as one more child"
)


def _question(ip: str) -> str:
    """How a namespace asks for a neighbour's link address: ARP (IPv4), NDP (IPv6)."""
    return "neighbour solicitation" if ":" in ip else "ARP request"


def _from_child_blocked(child: Point, lower_ns: Namespace, lower: Link, ip: str) -> Blocked:
    return Blocked(
        f"{child.id} is a macvlan child of {lower_ns.label}/{lower.name}, and {ip} belongs to "
        f"{lower_ns.label} itself: the macvlan driver never passes frames between a child and "
        f"its own parent device, so {lower_ns.label} never receives what {child.netns.label} "
        f"sends (its {_question(ip)} for {ip} leaves through {lower_ns.label}/{lower.name} "
        "onto the wire and no one answers); " + _SHIM.format(ns=lower_ns.label, lower=lower.name),
        ip,
    )


def _to_child_blocked(
    ns: Namespace, lower: Link, child_ns: Namespace, child: Link, ip: str
) -> Blocked:
    return Blocked(
        f"{ip} belongs to {child_ns.label}/{child.name}, a macvlan child of {ns.label}/"
        f"{lower.name}: the macvlan driver never passes frames between a parent device's "
        f"own namespace and its children, so {child_ns.label} never receives what {ns.label} "
        f"sends through {lower.name} (its {_question(ip)} for {ip} goes out onto the wire and "
        "no one answers); " + _SHIM.format(ns=ns.label, lower=lower.name),
        ip,
    )


def _route_or_fail(view: KernelView, ns: Namespace, dst: str, plan: PathPlan) -> Route | None:
    route = view.route(ns, dst)
    if route.kind in (RTN_UNREACHABLE, RTN_PROHIBIT, RTN_BLACKHOLE) or (
        route.oif is None and not route.local
    ):
        plan.notes.append(f"{ns.label} has no route to {dst}")
        return None
    return route


def _no_route_hint(state: NetnsState, dst_ip: str) -> str:
    """Why an IPv6 destination has no route, when the namespace has no IPv6 of its own."""
    if ":" not in dst_ip:
        return ""
    own = [a.ip for a in state.addresses if ":" in a.ip and not a.ip.lower().startswith("fe80")]
    if own == ["::1"] or not own:
        return (
            ": it has no IPv6 address but link-local ones, and no route a router "
            "advertisement or Docker (a network made with --ipv6) would give"
        )
    return ""


def plan_path(
    view: KernelView,
    src: Namespace,
    dst_ip: str,
    dst_port: int | None = None,
    redirect: Redirect | None = None,
) -> PathPlan:
    """Every interface a packet from `src` to `dst_ip` crosses, in order."""
    plan = PathPlan(dst_ip=dst_ip, dst_port=dst_port)
    state = view.state(src)
    route = view.route(src, dst_ip)
    if route.local and redirect is not None:
        target = redirect(src, dst_ip, dst_port, None)
        if target is not None:  # a published port: DNAT in this namespace's nat OUTPUT
            new_ip, new_port, why = target
            plan = plan_path(view, src, new_ip, new_port)
            plan.src_ip = dst_ip  # the kernel picks it for the connection before the DNAT
            plan.redirected = (dst_ip, dst_port)
            plan.dnat_at_source = True
            plan.notes.insert(0, f"{why}, in {src.label}'s nat OUTPUT before any interface")
            return plan
    if route.local:
        lo = next((link for link in state.links if link.arptype == 772), None)
        if lo is None:
            raise NoPathError(f"{src.label} owns {dst_ip} but has no loopback interface")
        point = plan.add(src, lo, state, "loopback")
        plan.src_ip = dst_ip
        plan.destination = point.id
        plan.notes.append(f"{dst_ip} belongs to {src.label} itself: the packet stays on lo")
        return plan
    if route.oif is None or route.kind in (RTN_UNREACHABLE, RTN_PROHIBIT, RTN_BLACKHOLE):
        real = [link for link in state.links if link.arptype != 772]
        if not real:
            raise NoPathError(f"{src.label} has no interface but lo: no packet can leave it")
        raise NoPathError(f"{src.label} has no route to {dst_ip}" + _no_route_hint(state, dst_ip))
    plan.src_ip = route.prefsrc
    plan.first_hop = route.gateway or dst_ip
    if route.from_ra:
        plan.notes.append(
            f"{src.label} reaches {dst_ip} by a route a router advertisement gave it (via "
            f"{route.gateway or 'the link'}): it lasts while that router keeps advertising"
        )
    out = state.link(route.oif)
    if out is None:
        raise NoPathError(f"{src.label}: route to {dst_ip} names an unknown interface")
    if route.gateway and route.gateway.lower().startswith("fe80:"):
        plan.notes.append(
            f"{src.label} reaches {dst_ip} via the link-local next hop {route.gateway} on "
            f"{out.name}: an IPv6 route names its router by the router's link-local address, "
            "which neighbour discovery resolves on that link"
        )
    plan.add(src, out, state, "source")
    arrived = _cross(view, plan, src, out, route.gateway or plan.dst_ip)
    if arrived is None:
        return plan
    return walk_from(view, plan, arrived, redirect)


def walk_from(
    view: KernelView,
    plan: PathPlan,
    arrived: tuple[Namespace, Link],
    redirect: Redirect | None = None,
) -> PathPlan:
    """Go on from a frame's arrival on `arrived` (a namespace and the link it came in by)
    to the destination, adding the points on the way: the rest of plan_path's walk, which
    topology.crossing also starts where a frame reaches another host."""
    ns, link = arrived
    for _ in range(MAX_HOPS):
        state = view.state(ns)
        master = state.link(link.master) if link.master else None
        if master is not None and master.kind == "bridge":
            plan.add(ns, link, state, "veth-peer")
            ingress = plan.add(ns, master, state, "bridge")
            ingress_link = master
        else:
            ingress_link = link
            ingress = None
        if state.owns(plan.dst_ip):
            target = (
                redirect(ns, plan.dst_ip, plan.dst_port, ingress_link.name) if redirect else None
            )
            if target is None:
                if ingress is None:
                    ingress = plan.add(ns, link, state, "destination")
                plan.destination = ingress.id
                return plan
            plan.redirected = (plan.dst_ip, plan.dst_port)
            plan.dst_ip, plan.dst_port, why = target
            plan.notes.append(why)
        route_in = _route_or_fail(view, ns, plan.dst_ip, plan)
        if route_in is None:
            if ingress is None:
                plan.add(ns, link, state, "veth-peer")
            return plan
        if route_in.local:
            point = ingress or plan.add(ns, link, state, "destination")
            plan.destination = point.id
            return plan
        out = state.link(route_in.oif) if route_in.oif is not None else None
        if out is None:
            plan.notes.append(f"{ns.label}: route to {plan.dst_ip} names an unknown interface")
            return plan
        gateway = route_in.gateway
        if out.index != ingress_link.index:
            if ingress is None:
                plan.add(ns, link, state, "veth-peer")
            plan.add(ns, out, state, "bridge" if out.kind == "bridge" else "egress")
        found = _cross(view, plan, ns, out, gateway or plan.dst_ip)
        if found is None:
            return plan
        ns, link = found
    plan.notes.append(f"gave up after {MAX_HOPS} hops (a routing loop?)")
    return plan


def _cross(
    view: KernelView, plan: PathPlan, ns: Namespace, link: Link, next_hop: str
) -> tuple[Namespace, Link] | None:
    """Follow a frame leaving ns through link towards next_hop to the link it arrives on.

    Adds the points in between (bridge port, macvlan parent); None when the walk ends
    here (a note or `plan.blocked` says why).
    """
    if link.kind == "macvlan":
        found = find_lower(view, ns, link)
        if found is None:
            plan.notes.append(f"cannot find the parent device of macvlan {link.name} in {ns.label}")
            return None
        lower_ns, lower = found
        sibling = macvlan_child_owning(view, lower_ns, lower, next_hop)
        if sibling is not None:
            return sibling  # bridge mode: the driver hands it across, the parent never sees it
        child = plan.add(ns, link, view.state(ns), "source")
        plan.add(lower_ns, lower, view.state(lower_ns), "parent")
        owner = _owner(view, next_hop)
        if owner is not None and owner[0].inode == lower_ns.inode:
            _block(plan, _from_child_blocked(child, lower_ns, lower, next_hop))
            return None
        ns, link = lower_ns, lower
    else:
        target = macvlan_child_owning(view, ns, link, next_hop)
        if target is not None:
            _block(plan, _to_child_blocked(ns, link, target[0], target[1], next_hop))
            return None
    if link.kind == "bridge":
        port_found = find_bridge_port(view, ns, link, next_hop)
        if port_found is None:
            _leave(
                plan,
                ns,
                link,
                next_hop,
                f"no port of bridge {link.name} in {ns.label} leads to {next_hop}",
            )
            return None
        port, _, _ = port_found
        plan.add(ns, port, view.state(ns), "veth-peer")
        link = port
    if link.kind != "veth":
        # a rootless engine's slirp4netns or pasta (a process of this host's)
        local_tun = link.kind == "tun" and ns.host is None
        carrier = carrier_of(ns.inode, link.name) if local_tun else None
        if carrier is not None:
            plan.notes.append(carrier_note(ns.label, carrier))
            return None
        _leave(
            plan,
            ns,
            link,
            next_hop,
            f"the packet leaves {ns.label} through {link.name} ({link.kind or 'device'}); "
            "flowtrace cannot follow it further",
        )
        return None
    peer = find_peer(view, ns, link)
    if peer is None:
        _leave(plan, ns, link, next_hop, f"cannot find the peer of veth {link.name} in {ns.label}")
        return None
    far = macvlan_child_owning(view, peer[0], peer[1], next_hop)
    if far is not None:  # the frame arrives on a parent device and goes to its child
        plan.add(peer[0], peer[1], view.state(peer[0]), "parent")
        return far
    return peer


def _leave(plan: PathPlan, ns: Namespace, link: Link, next_hop: str, note: str) -> None:
    plan.exit = Exit(ns, link, next_hop, note)
    plan.notes.append(note)


def _block(plan: PathPlan, blocked: Blocked) -> None:
    plan.blocked = blocked
    plan.notes.append(blocked.why)


class LiveView:
    """A KernelView over the running kernel, caching each namespace's state.

    Candidate namespaces come cheaply, host and the known endpoints first (a
    container's veth peer is almost always in the host), then /run/netns, then every
    namespace a process holds; Docker is asked for a name only for a namespace the
    path actually enters.
    """

    def __init__(self, known: list[Namespace] | None = None) -> None:
        self._known = list(known or [])
        self._namespaces: list[Namespace] | None = None
        self._states: dict[int, NetnsState] = {}

    def know(self, known: list[Namespace]) -> None:
        """Name these namespaces (the endpoints) first; before the walk asks for any."""
        self._known = list(known)
        self._namespaces = None

    def namespaces(self) -> list[Namespace]:
        if self._namespaces is None:
            ordered: dict[int, Namespace] = {}
            for ns in [host_namespace(), *self._known, *all_namespaces(with_docker=False)]:
                ordered.setdefault(ns.inode, ns)
            self._namespaces = list(ordered.values())
        return self._namespaces

    def named(self, ns: Namespace) -> Namespace:
        for known in self._known:
            if known.inode == ns.inode:
                return known
        if ns.label.startswith("pid:") or is_podman_netns_name(ns.label):
            return label_namespace(ns)  # a container's, when an engine knows it
        return ns

    def state(self, ns: Namespace) -> NetnsState:
        key = ns.inode or hash(ns.path)
        if key not in self._states:
            try:
                self._states[key] = read_state(ns.path)
            except NotFoundError:
                if ns.label == "host" or ns.container or not ns.label.startswith("pid:"):
                    raise
                # a short-lived process's namespace vanished while we looked: nothing there
                self._states[key] = NetnsState((), ())
        return self._states[key]

    def route(self, ns: Namespace, dst: str) -> Route:
        return route_get(ns.path, dst)

    def nsid(self, ns: Namespace, target: Namespace) -> int | None:
        return nsid_of(ns.path, target.path)
