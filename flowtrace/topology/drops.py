"""Where a lost packet vanished, and the firewall rule that dropped it.

A capture socket sees a frame when it arrives on a device (before netfilter) and when
it is handed to one to send (after netfilter).  So a packet seen at one point and not
at the next point *of the same namespace* vanished inside that namespace, where its
firewall decides: every base chain of every table at each hook on the packet's way
(Docker 28's raw drops, its per-bridge DROP, the isolation chains, nftables tables,
a FORWARD policy of DROP...); a veth between two namespaces does not drop.  Rules
match on layer-3 interfaces: a bridge port's master bridge on the way in, and the
device the namespace's route leaves by on the way out.

`drop_site` and `describe_drop` are pure; `explain_loss` reads the namespace's state,
route and rules and joins them.  An IPv6 packet is judged by the IPv6 rules (ip6tables',
nftables' ip6 and inet tables), and so is a neighbour solicitation (NDP is ICMPv6, and
goes through input): a firewall that drops it leaves the asker without the neighbour's
link address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

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

# The rule model is imported where a drop is explained: a trace whose probes all came
# back never loads it (8-10 ms of imports).
if TYPE_CHECKING:
    from flowtrace.topology.netfilter import DropFinding, Firewall, PacketView

#: ICMPv6, as the filter rules match it (NDP is ICMPv6), and its neighbour solicitation.
_ICMPV6 = 58
_NEIGHBOUR_SOLICITATION = 135


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
    source namespace (where it was seen leaving: its OUTPUT chain had let it go).  A
    path that ends where a packet came in (the walk found no way on: a blackhole route)
    ends in the namespace it came into.
    """
    ids = [p.id for p in points]
    if last_point not in ids:
        return None
    last = ids.index(last_point)
    ends_short = (
        last + 1 == len(points)
        and points[last].role != "destination"
        and last > 0
        and points[last - 1].netns.key != points[last].netns.key
    )
    if ends_short:
        return points[last]
    if last + 1 >= len(points) or points[last + 1].netns.key != points[last].netns.key:
        return None
    first = last
    while first > 0 and points[first - 1].netns.key == points[last].netns.key:
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


def describe_drop(rule: str | DropFinding, site: DropSite, why: str | None = None) -> str:
    """The verdict's words for a drop: the rule, where, and what it means in the engine's
    terms (Docker's, Podman's, firewalld's) where it is one of theirs.

    `why`: the reason when flowtrace knows better than the rule's shape (two engines'
    rules in conflict)."""
    way = f"from {site.in_iface}" + (f" to {site.out_iface}" if site.out_iface else "")
    if isinstance(rule, str):
        text = f"dropped in {site.netns.label} by `{rule}`, filter chain {site.chain} {way}"
        if why:
            text += f": {why}"
        elif rule.startswith("-P "):
            text += ": no rule accepted it, so the chain's policy dropped it"
        return text
    found = rule
    maybe = "" if found.certain else "maybe "
    text = f"{maybe}dropped in {site.netns.label} by `{found.rule}`, {where(found)} {way}"
    from flowtrace.topology.netfilter.engines import drop_words

    words = why or drop_words(found.source, found.base, found.packet or _no_packet())
    if words:
        text += f": {words}"
    if not found.certain:
        text += f" ({found.doubt})"
    return text


def where(found: DropFinding) -> str:
    """`filter chain FORWARD`, `raw chain PREROUTING (iptables-legacy)`, or for nftables
    `the prerouting hook (priority -300)`."""
    base = found.base
    if base.source == "nftables":
        return f"the {found.hook} hook (priority {base.priority})"
    legacy = " (iptables-legacy)" if base.source == "iptables-legacy" else ""
    return f"{base.table.name} chain {base.chain.name}{legacy}"


def _no_packet() -> PacketView:
    from flowtrace.topology.netfilter import PacketView

    return PacketView(0)


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
    dst = seen.dst
    if state.owns(dst) and dst != final_dst:
        dst = final_dst  # routed after the DNAT the walk will find in prerouting
    site = drop_site(ingress, state, route_get(path, dst))
    if site is None:
        return without_rule(ingress, state, seen, dst)
    from flowtrace.topology.netfilter import attribute, find_drop
    from flowtrace.topology.netfilter.owners import forward_conflict

    firewall = _rules(path, seen.dst)
    local = [a.ip for a in state.addresses]
    found = find_drop(
        firewall,
        seen.proto,
        seen.src,
        seen.dst,
        seen.sport,
        seen.dport,
        site.in_iface,
        site.out_iface,
        local,
        icmp_type=seen.icmp_type,
    )
    if found is None:
        return without_rule(ingress, state, seen, dst)
    why = forward_conflict(found.rule, firewall, site.out_iface) if found.certain else None
    text = describe_drop(found, site, why)
    seen_by = found.packet
    if seen_by is not None and (seen_by.dst, seen_by.dport) != (seen.dst, seen.dport):
        # prerouting's DNAT came before the chain that dropped it
        before, after = Address(seen.dst, seen.dport), Address(seen_by.dst or "", seen_by.dport)
        ev = NatEvent("DNAT", (last_point, last_point), before, after)
        peer = Address(seen.src, seen.sport)
        dnat = attribute(firewall, ev, seen.proto, site.in_iface, None, local, peer=peer)
        if dnat is not None:
            text = f"rewritten to {after} by `{dnat}`, then {text}"
    return DropReason(found.rule, text)


def without_rule(ingress: Point, state: NetnsState, seen: Headers, dst: str) -> DropReason | None:
    """No rule dropped it: what the kernel's route lookup and neighbours say there."""
    from flowtrace.topology import silent_drops

    link = state.link(ingress.ifindex)
    if link is None:
        return None
    master = state.link(link.master) if link.master is not None else None
    l3 = master if master is not None and master.kind == "bridge" else link
    return silent_drops.explain(ingress, l3.name, l3.index, seen, dst)


def arrival(points: Sequence[Point], destination: str) -> Point | None:
    """The point where a packet entered the destination's namespace along the path.

    None when the destination is not on the path or shares the source's namespace
    (a packet that never left has no way in to be dropped on).
    """
    ids = [p.id for p in points]
    if destination not in ids:
        return None
    first = ids.index(destination)
    while first > 0 and points[first - 1].netns.key == points[first].netns.key:
        first -= 1
    return points[first] if first > 0 else None


def describe_answer_drop(rule: str | DropFinding, netns_label: str, out_iface: str) -> str:
    """The verdict's words when the destination's output side dropped the answer."""
    text_rule = rule if isinstance(rule, str) else rule.rule
    chain = "filter chain OUTPUT" if isinstance(rule, str) else where(rule)
    maybe = "" if isinstance(rule, str) or rule.certain else "maybe "
    text = (
        f"the answer was {maybe}dropped in {netns_label} by `{text_rule}`, {chain} to {out_iface}"
    )
    words = None
    if not isinstance(rule, str):
        from flowtrace.topology.netfilter.engines import drop_words

        words = drop_words(rule.source, rule.base, rule.packet or _no_packet())
    elif text_rule.startswith("-P "):
        words = "no rule accepted it, so the chain's policy dropped it"
    if words:
        text += f": {words}"
    if not isinstance(rule, str) and not rule.certain:
        text += f" ({rule.doubt})"
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
    from flowtrace.topology.netfilter import find_drop

    path = ingress.netns.path
    state = read_state(path)
    firewall = _rules(path, seen.dst)
    local = [a.ip for a in state.addresses]
    site = drop_site(ingress, state, route_get(path, seen.dst))
    if site is not None and site.out_iface is None:
        found = find_drop(
            firewall, seen.proto, seen.src, seen.dst, seen.sport, seen.dport,
            site.in_iface, None, local, icmp_type=seen.icmp_type,
        )  # fmt: skip
        if found is not None:
            return DropReason(found.rule, describe_drop(found, site))
    back = route_get(path, seen.src)
    out = state.link(back.oif) if back.oif is not None else None
    if out is None:
        found_silent = without_rule(ingress, state, seen, seen.dst)
        if found_silent is not None:
            return found_silent
        return DropReason(
            None,
            f"the answer cannot leave {ingress.netns.label}: no route back to {seen.src} "
            "there, and no rule is involved",
        )
    answer = found_answer_drop(firewall, seen, out.name, local)
    if answer is None:
        return without_rule(ingress, state, seen, seen.dst)
    return DropReason(answer.rule, describe_answer_drop(answer, ingress.netns.label, out.name))


def found_answer_drop(
    firewall: Firewall, seen: Headers, out_iface: str, local: list[str]
) -> DropFinding | None:
    """The output-side drop of the destination's answer to `seen` (ESTABLISHED, reversed)."""
    from flowtrace.topology.netfilter import find_drop

    replies = {128: 129} if seen.proto == _ICMPV6 else {8: 0, 13: 14, 15: 16, 17: 18}
    reply_type = replies.get(seen.icmp_type or -1)
    return find_drop(
        firewall, seen.proto, seen.dst, seen.src, seen.dport, seen.sport,
        None, out_iface, local, ctstate="ESTABLISHED", icmp_type=reply_type,
    )  # fmt: skip


def _rules(netns_path: str, address: str) -> Firewall:
    """The rules that judge a packet to `address`: the IPv4 or the IPv6 ones."""
    from flowtrace.topology.netfilter import read_firewall

    return read_firewall(netns_path, ipv6=ip_version(address) == 6)


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
    from flowtrace.topology.netfilter import find_drop, read_firewall

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
    found = find_drop(
        read_firewall(path, ipv6=True),
        _ICMPV6,
        sender,
        solicited_node(target),
        None,
        None,
        in_iface,
        None,
        [a.ip for a in state.addresses],
        icmp_type=_NEIGHBOUR_SOLICITATION,
    )
    if found is None:
        return None
    return DropReason(found.rule, describe_ndp_drop(found.rule, point.netns.label, in_iface))


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
