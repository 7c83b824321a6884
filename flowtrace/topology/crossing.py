"""A path that crosses hosts: each host's part walked on that host's kernel state, joined.

On one host the walk (topology.path) ends where a frame leaves the namespaces it can
see: out of an uplink onto the wire, or into a bridge's VXLAN port.  Here the walk goes
on, the way the frame does:

* onto the wire: the next hop the frame was sent to (the destination itself, or a
  gateway) is looked up among the hosts the trace knows; the host that owns it receives
  the frame on the link holding that address (or, for a macvlan child, on its parent),
  and its own walk goes on from there (its published ports' DNAT, its bridges, its
  containers);
* into an overlay: a bridge none of whose veths leads to the address, with a VXLAN
  port, sends the frame to the VTEP the device's neighbour and forwarding entries name
  (topology.overlay); the VXLAN device's own namespace (the host's) sends the
  encapsulated datagram by its route to that VTEP, the host owning the VTEP receives
  it on its underlay link, hands it to its VXLAN device of the same VNI, and the
  decapsulated frame goes on through that host's overlay bridge.

Each host is a `HostPart`: a KernelView of its namespaces, the DNAT its published
ports make, and the readers of its VXLAN devices.  The walk is pure logic over them;
the live parts are built by run.hosts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from flowtrace.model import Namespace
from flowtrace.topology.kernel import Link
from flowtrace.topology.overlay import VxlanFacts
from flowtrace.topology.path import (
    MAX_HOPS,
    Exit,
    KernelView,
    PathPlan,
    Redirect,
    plan_path,
    walk_from,
)

#: A path crosses at most this many hosts (a loop between hosts stops here).
MAX_HOSTS = 8


@dataclass
class HostPart:
    """One host as the walk sees it: its namespaces' state, its DNAT, its VXLAN devices."""

    name: str | None  # None: this host
    view: KernelView
    redirect: Redirect | None = None
    #: The VXLAN settings of a device (None when it is not one).
    vxlan: Callable[[Namespace, Link], VxlanFacts | None] = lambda ns, link: None
    #: (MAC, VTEP) a VXLAN device sends a frame for an address to.
    vtep: Callable[[Namespace, Link, str], tuple[str, str] | None] = lambda ns, link, ip: None
    #: VNI -> (network name, encrypted), from the host's engine.
    overlays: dict[int, tuple[str, bool]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or "this host"

    def owner(self, ip: str) -> tuple[Namespace, Link] | None:
        """The namespace (the host's own first) and the link that hold address `ip`."""
        for ns in self.view.namespaces():
            state = self.view.state(ns)
            for address in state.addresses:
                if address.ip != ip:
                    continue
                link = state.link(address.index)
                if link is not None and link.arptype != 772:
                    return self.view.named(ns), link
        return None


@dataclass(frozen=True)
class TunnelHop:
    """An overlay crossing: where the frame was encapsulated and decapsulated, and how."""

    vni: int
    port: int
    network: str | None
    encrypted: bool
    local: str  # the sending VTEP's address
    remote: str  # the receiving VTEP's address
    from_host: str | None
    to_host: str | None
    #: The points: (the sender's VXLAN device, its underlay link, the receiver's
    #: underlay link, the receiver's VXLAN device).
    points: tuple[str, ...] = ()

    def describe(self) -> str:
        name = f"overlay network {self.network}" if self.network else "an overlay"
        text = (
            f"{name}: VXLAN VNI {self.vni} on UDP {self.port} from {self.local} "
            f"({self.from_host or 'this host'}) to {self.remote} ({self.to_host or 'this host'})"
        )
        if self.encrypted:
            text += (
                "; the network is encrypted, so the VXLAN datagrams cross the underlay inside "
                "IPsec ESP and the inner packet cannot be seen there, only on each host's "
                "VXLAN device and inside"
            )
        return text


@dataclass
class Crossing:
    """A walk over hosts: the plan, the overlays it crossed, and the next hop no host the
    walk knows owns (where it had to stop), if any."""

    plan: PathPlan
    tunnels: list[TunnelHop] = field(default_factory=list)
    unknown: str | None = None


@dataclass(frozen=True)
class _Leg:
    """How a frame leaves a host: the next hop on the wire, and the tunnel if any."""

    next_hop: str
    tunnel: TunnelHop | None = None


def plan_across(
    hosts: Sequence[HostPart],
    source: HostPart,
    src: Namespace,
    dst_ip: str,
    dst_port: int | None = None,
) -> Crossing:
    """Every point a packet from `src` (on `source`) to dst_ip crosses, over every host."""
    plan = plan_path(source.view, src, dst_ip, dst_port, source.redirect)
    crossing = Crossing(plan)
    tunnels = crossing.tunnels
    current = source
    for _ in range(MAX_HOSTS):
        out = plan.exit
        if out is None or plan.destination is not None or plan.blocked is not None:
            return crossing
        leg = _tunnel_leg(current, plan, out) or _Leg(out.next_hop)
        if plan.exit is None:  # the overlay had no way on (a note says why)
            return crossing
        found = _next_host(hosts, current, leg.next_hop)
        if found is None:
            where = leg.tunnel.remote if leg.tunnel else leg.next_hop
            crossing.unknown = where
            plan.notes.append(
                f"{where} belongs to no host this trace knows ("
                + ", ".join(h.label for h in hosts)
                + "): name its host with --host ALIAS=URL or an endpoint NAME@HOST to follow "
                "the packet there"
            )
            return crossing
        host, (ns, link) = found
        _drop_note(plan, plan.exit)
        plan.exit = None
        if leg.tunnel is not None:
            crossed = _decapsulate(host, plan, ns, link, leg.tunnel)
            if crossed is None:
                return crossing
            arrived, tunnel = crossed
            tunnels.append(tunnel)
            plan.notes.append(tunnel.describe())
        else:
            arrived = _arrive(host, plan, ns, link)
        plan = walk_from(host.view, plan, arrived, host.redirect)
        current = host
    plan.notes.append(f"gave up after {MAX_HOSTS} hosts (a loop between hosts?)")
    return crossing


def _drop_note(plan: PathPlan, out: Exit | None) -> None:
    if out is not None and out.note in plan.notes:
        plan.notes.remove(out.note)


def _next_host(
    hosts: Sequence[HostPart], current: HostPart, ip: str
) -> tuple[HostPart, tuple[Namespace, Link]] | None:
    for host in hosts:
        if host is current:
            continue
        owner = host.owner(ip)
        if owner is not None:
            return host, owner
    return None


def _arrive(host: HostPart, plan: PathPlan, ns: Namespace, link: Link) -> tuple[Namespace, Link]:
    """A frame from the wire for an address of (ns, link): a macvlan child's frames come in
    by its parent; anything else by the link itself."""
    view = host.view
    if link.kind == "macvlan" and link.peer_index is not None:
        for cand in view.namespaces():
            if link.peer_nsid is None and cand.key != ns.key:
                continue
            if link.peer_nsid is not None and view.nsid(ns, cand) != link.peer_nsid:
                continue
            lower = view.state(cand).link(link.peer_index)
            if lower is not None:
                plan.add(view.named(cand), lower, view.state(cand), "parent")
                return ns, link
    plan.add(ns, link, view.state(ns), "ingress")
    return ns, link


def _tunnel_leg(host: HostPart, plan: PathPlan, out: Exit) -> _Leg | None:
    """The overlay's way out of a bridge with a VXLAN port, or None (not an overlay)."""
    if out.link.kind != "bridge":
        return None
    view, sandbox = host.view, out.netns
    state = view.state(sandbox)
    ports = [p for p in state.ports_of(out.link.index) if p.kind == "vxlan"]
    for port in ports:
        facts = host.vxlan(sandbox, port)
        remote = host.vtep(sandbox, port, out.next_hop)
        if facts is None or remote is None:
            continue
        underlay = _underlay_namespace(view, sandbox, port)
        if underlay is None:
            plan.notes.append(f"cannot find the namespace {sandbox.label}/{port.name} sends from")
            plan.exit = None
            return None
        route = view.route(underlay, remote[1])
        egress = view.state(underlay).link(route.oif) if route.oif is not None else None
        if egress is None:
            plan.notes.append(f"{underlay.label} has no route to the VTEP {remote[1]}")
            plan.exit = None
            return None
        vxlan_point = plan.add(sandbox, port, state, "vxlan")
        wire = plan.add(underlay, egress, view.state(underlay), "underlay")
        network, encrypted = host.overlays.get(facts.vni, (None, False))
        local = facts.local or route.prefsrc or ""
        tunnel = TunnelHop(
            facts.vni,
            facts.port,
            network,
            encrypted,
            local,
            remote[1],
            host.name,
            None,
            (vxlan_point.id, wire.id),
        )
        _drop_note(plan, out)
        plan.exit = Exit(underlay, egress, route.gateway or remote[1], out.note)
        return _Leg(route.gateway or remote[1], tunnel)
    return None


def _underlay_namespace(view: KernelView, sandbox: Namespace, vxlan: Link) -> Namespace | None:
    """The namespace a VXLAN device's UDP socket lives in (IFLA_LINK_NETNSID; the
    host's, where Docker made the device before moving it into the sandbox)."""
    if vxlan.peer_nsid is None:
        return sandbox
    for cand in view.namespaces():
        if cand.key != sandbox.key and view.nsid(sandbox, cand) == vxlan.peer_nsid:
            return view.named(cand)
    return None


def _decapsulate(
    host: HostPart, plan: PathPlan, ns: Namespace, link: Link, tunnel: TunnelHop
) -> tuple[tuple[Namespace, Link], TunnelHop] | None:
    """The datagram arrives on `host`'s underlay link; its VXLAN device of the same VNI,
    bound in that namespace, takes the inner frame."""
    view = host.view
    wire = plan.add(ns, link, view.state(ns), "underlay")
    for cand in view.namespaces():
        if cand.key == ns.key:
            continue
        for dev in view.state(cand).links:
            if dev.kind != "vxlan":
                continue
            facts = host.vxlan(cand, dev)
            if facts is None or facts.vni != tunnel.vni:
                continue
            if dev.peer_nsid is not None and view.nsid(cand, ns) != dev.peer_nsid:
                continue
            named = view.named(cand)
            point = plan.add(named, dev, view.state(cand), "vxlan")
            network, encrypted = host.overlays.get(tunnel.vni, (None, False))
            crossed = replace(
                tunnel,
                network=tunnel.network or network,
                encrypted=tunnel.encrypted or encrypted,
                to_host=host.name,
                points=(*tunnel.points, wire.id, point.id),
            )
            return (named, dev), crossed
    plan.notes.append(
        f"host {host.label} has no VXLAN device for VNI {tunnel.vni}: the datagram to "
        f"{tunnel.remote} is dropped there (is the container's network attached on that host?)"
    )
    return None


__all__ = ["MAX_HOPS", "Crossing", "HostPart", "TunnelHop", "plan_across"]
