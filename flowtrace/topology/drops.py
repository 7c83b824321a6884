"""Where a lost packet vanished, and the filter rule that dropped it.

A capture socket sees a frame when it arrives on a device (before netfilter) and when
it is handed to one to send (after netfilter).  So a packet seen at one point and not
at the next point *of the same namespace* vanished inside that namespace, where its
filter table decides (Docker's isolation chains, a FORWARD policy of DROP...); a veth
between two namespaces does not drop.  iptables matches on layer-3 interfaces: a
bridge port's master bridge on the way in, and the device the namespace's route leaves
by on the way out.

`drop_site` and `describe_drop` are pure; `explain_loss` reads the namespace's state,
route and rules and joins them.  An IPv6 packet is judged by ip6tables' rules, and so
is a neighbour solicitation (NDP is ICMPv6, and goes through INPUT): a firewall that
drops it leaves the asker without the neighbour's link address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from flowtrace.errors import FlowtraceError
from flowtrace.model import (
    Address,
    DropReason,
    Headers,
    Namespace,
    NatEvent,
    Point,
    Sighting,
    ip_version,
)
from flowtrace.topology.kernel import NetnsState, Route, read_state, route_get
from flowtrace.topology.netfilter import NatRuleset, attribute, find_drop_rule, read_ruleset
from flowtrace.topology.netfilter.owners import forward_conflict

#: ICMPv6, as the filter table matches it (NDP is ICMPv6).
_ICMPV6 = 58


@dataclass(frozen=True)
class DropSite:
    """The namespace a packet vanished in and its interfaces as iptables sees them."""

    netns: Namespace
    in_iface: str
    #: None when the namespace would have delivered the packet to itself (INPUT).
    out_iface: str | None

    @property
    def chain(self) -> str:
        return "FORWARD" if self.out_iface is not None else "INPUT"


def vanished_in(points: Sequence[Point], last_point: str) -> Point | None:
    """The first point, along the path, of the namespace where the packet vanished.

    None when the packet was lost between namespaces, past the last point, or in the
    source namespace (where it was seen leaving: its OUTPUT chain had let it go).
    """
    ids = [p.id for p in points]
    if last_point not in ids:
        return None
    last = ids.index(last_point)
    if last + 1 >= len(points) or points[last + 1].netns.inode != points[last].netns.inode:
        return None
    first = last
    while first > 0 and points[first - 1].netns.inode == points[last].netns.inode:
        first -= 1
    return points[first] if first > 0 else None


def drop_site(ingress: Point, state: NetnsState, route: Route) -> DropSite | None:
    """The filter table's view of a packet that entered at `ingress` and met `route`."""
    link = state.link(ingress.ifindex)
    if link is None:
        return None
    master = state.link(link.master) if link.master is not None else None
    in_iface = master.name if master is not None and master.kind == "bridge" else link.name
    if route.local:
        return DropSite(ingress.netns, in_iface, None)
    out = state.link(route.oif) if route.oif is not None else None
    if out is None:
        return None  # no route: the kernel answers with an ICMP error, no rule drops it
    return DropSite(ingress.netns, in_iface, out.name)


def describe_drop(rule: str, site: DropSite, why: str | None = None) -> str:
    """The verdict's words for a drop: the rule, where, and Docker's reason if it is one.

    `why`: the reason when flowtrace knows better than the rule's shape (two engines'
    rules in conflict)."""
    way = f"from {site.in_iface}" + (f" to {site.out_iface}" if site.out_iface else "")
    text = f"dropped in {site.netns.label} by `{rule}`, filter chain {site.chain} {way}"
    if why:
        text += f": {why}"
    elif "DOCKER-ISOLATION" in rule:
        text += ": Docker isolates its bridge networks from each other"
    elif rule.startswith("-P "):
        text += ": no rule accepted it, so the chain's policy dropped it"
    return text


def explain_loss(
    points: Sequence[Point], last_point: str, seen: Headers, final_dst: str, final_port: int | None
) -> DropReason | None:
    """Why a request seen last at `last_point` went no further, or None if unknown.

    `seen` are its headers there; `final_dst`/`final_port` the destination after any
    DNAT the path predicts (PREROUTING runs before the filter table does).
    """
    ingress = vanished_in(points, last_point)
    if ingress is None:
        return None
    path = ingress.netns.path
    state = read_state(path)
    dst, dport = seen.dst, seen.dport
    if state.owns(dst) and dst != final_dst:
        dst, dport = final_dst, final_port
    site = drop_site(ingress, state, route_get(path, dst))
    if site is None:
        return None
    ruleset = _rules(path, seen.dst)
    local = [a.ip for a in state.addresses]
    rule = find_drop_rule(
        ruleset, seen.proto, seen.src, dst, seen.sport, dport, site.in_iface, site.out_iface, local
    )
    if rule is None:
        return None
    text = describe_drop(rule, site, forward_conflict(rule, ruleset, site.out_iface))
    if (dst, dport) != (seen.dst, seen.dport):  # PREROUTING's DNAT came before the filter
        before, after = Address(seen.dst, seen.dport), Address(dst, dport)
        ev = NatEvent("DNAT", (last_point, last_point), before, after)
        peer = Address(seen.src, seen.sport)
        dnat = attribute(ruleset, ev, seen.proto, site.in_iface, None, local, peer=peer)
        if dnat is not None:
            text = f"rewritten to {after} by `{dnat}`, then {text}"
    return DropReason(rule, text)


def arrival(points: Sequence[Point], destination: str) -> Point | None:
    """The point where a packet entered the destination's namespace along the path.

    None when the destination is not on the path or shares the source's namespace
    (a packet that never left has no way in to be dropped on).
    """
    ids = [p.id for p in points]
    if destination not in ids:
        return None
    first = ids.index(destination)
    while first > 0 and points[first - 1].netns.inode == points[first].netns.inode:
        first -= 1
    return points[first] if first > 0 else None


def describe_answer_drop(rule: str, netns_label: str, out_iface: str) -> str:
    """The verdict's words when the destination's OUTPUT chain dropped the answer."""
    text = (
        f"the answer was dropped in {netns_label} by `{rule}`, filter chain OUTPUT to {out_iface}"
    )
    if rule.startswith("-P "):
        text += ": no rule accepted it, so the chain's policy dropped it"
    return text


def explain_unanswered(
    points: Sequence[Point], destination: str, seen: Headers
) -> DropReason | None:
    """Why a request seen arriving at its destination got no answer, or None if unknown.

    Seen at the destination's interface means it passed every hop; the destination's
    filter table can still drop it on INPUT (before the stack answers) or drop the
    answer on OUTPUT (before any interface sees it).  `seen` are its headers there.
    """
    ingress = arrival(points, destination)
    if ingress is None:
        return None
    path = ingress.netns.path
    state = read_state(path)
    ruleset = _rules(path, seen.dst)
    local = [a.ip for a in state.addresses]
    site = drop_site(ingress, state, route_get(path, seen.dst))
    if site is not None and site.out_iface is None:
        rule = find_drop_rule(
            ruleset, seen.proto, seen.src, seen.dst, seen.sport, seen.dport,
            site.in_iface, None, local,
        )  # fmt: skip
        if rule is not None:
            return DropReason(rule, describe_drop(rule, site))
    back = route_get(path, seen.src)
    out = state.link(back.oif) if back.oif is not None else None
    if out is None:
        return None
    rule = find_drop_rule(
        ruleset, seen.proto, seen.dst, seen.src, seen.dport, seen.sport,
        None, out.name, local, ctstate="ESTABLISHED",
    )  # fmt: skip
    if not rule:
        return None
    return DropReason(rule, describe_answer_drop(rule, ingress.netns.label, out.name))


def _rules(netns_path: str, address: str) -> NatRuleset:
    """The rules that judge a packet to `address`: iptables' or ip6tables'."""
    return read_ruleset(netns_path, ipv6=ip_version(address) == 6)


def solicited_node(ip: str) -> str:
    """The multicast address a neighbour solicitation for `ip` is sent to (RFC 4291 2.7.1)."""
    low = int(ipaddress.IPv6Address(ip)) & 0xFFFFFF
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("ff02::1:ff00:0")) | low))


def describe_ndp_drop(rule: str, netns_label: str, in_iface: str) -> str:
    """The verdict's words when a neighbour solicitation was dropped where it arrived."""
    return (
        f"{netns_label} dropped them by `{rule}`, filter chain INPUT from {in_iface}: IPv6 "
        "learns a neighbour's link address by NDP (ICMPv6 types 135 and 136), so a firewall "
        "that drops neighbour solicitations cuts the neighbour off"
    )


def explain_unresolved(
    points: Sequence[Point], point_id: str, sender: str, target: str
) -> DropReason | None:
    """The rule that dropped a neighbour solicitation (from `sender`, for `target`) seen
    arriving at a point, if any."""
    point = next((p for p in points if p.id == point_id), None)
    if point is None or ip_version(target) != 6:
        return None
    path = point.netns.path
    state = read_state(path)
    link = state.link(point.ifindex)
    if link is None:
        return None
    master = state.link(link.master) if link.master is not None else None
    in_iface = master.name if master is not None and master.kind == "bridge" else link.name
    rule = find_drop_rule(
        read_ruleset(path, ipv6=True),
        _ICMPV6,
        sender,
        solicited_node(target),
        None,
        None,
        in_iface,
        None,
        [a.ip for a in state.addresses],
    )
    if rule is None:
        return None
    return DropReason(rule, describe_ndp_drop(rule, point.netns.label, in_iface))


class KernelExplainer:
    """correlate.verdicts.LossExplainer for a live run: the namespaces' own rules.

    Each place and flow is looked up once (a hundred lost probes of one flow read the
    rules once); a namespace that vanished or whose rules cannot be read explains
    nothing rather than failing the run.
    """

    def __init__(self, points: Sequence[Point], final_dst: str, final_port: int | None) -> None:
        self.points = list(points)
        self.final_dst, self.final_port = final_dst, final_port
        self._known: dict[tuple[object, ...], DropReason | None] = {}

    def lost(self, last: Sighting) -> DropReason | None:
        h = last.headers
        key = ("lost", last.point, h.proto, h.src, h.dst, h.sport, h.dport)
        if key not in self._known:
            try:
                found = explain_loss(self.points, last.point, h, self.final_dst, self.final_port)
            except (FlowtraceError, OSError):
                found = None  # the namespace vanished, or its rules cannot be read
            self._known[key] = found
        return self._known[key]

    def unanswered(self, arrived: Sighting) -> DropReason | None:
        h = arrived.headers
        key = ("unanswered", arrived.point, h.proto, h.src, h.dst, h.sport, h.dport)
        if key not in self._known:
            try:
                found = explain_unanswered(self.points, arrived.point, h)
            except (FlowtraceError, OSError):
                found = None
            self._known[key] = found
        return self._known[key]

    def unresolved(self, point: str, sender: str, target: str) -> DropReason | None:
        key = ("unresolved", point, sender, target)
        if key not in self._known:
            try:
                found = explain_unresolved(self.points, point, sender, target)
            except (FlowtraceError, OSError):
                found = None
            self._known[key] = found
        return self._known[key]
