"""What `flowtrace rules` shows: a packet's way through every firewall on its path, unsent.

The path is the one a trace would take (topology.route.resolve_route); each namespace
on it is one segment with the interfaces its rules see (a bridge port's bridge, the
device the route leaves by) and its way there: sent (output, postrouting), forwarded
(prerouting, forward, postrouting) or delivered (prerouting, input).  The request
goes through each segment's hooks (netfilter.hooks.traverse) with the rewrites the
segments before made; the reply comes back through them in reverse, established,
with conntrack undoing each request binding where the kernel does.  A namespace is
entered with mark 0 (crossing namespaces clears it).  `walk_path` is pure;
`segments_of` reads the namespaces.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from flowtrace.errors import FlowtraceError, MissingToolError
from flowtrace.model import Namespace, Point
from flowtrace.topology.kernel import NetnsState, read_state
from flowtrace.topology.netfilter import (
    NEW,
    DropFinding,
    Firewall,
    NamespacePass,
    PacketView,
    first_drop,
    read_firewall,
    traverse,
    way_of,
)
from flowtrace.topology.netfilter.engines import routed_words
from flowtrace.topology.netfilter.explain import maybe_words

_REPLY_WAY = {"forward": "forward", "output": "input", "input": "output"}
_ICMP_REPLY = {8: 0, 13: 14, 15: 16, 17: 18, 128: 129}


@dataclass(frozen=True)
class Segment:
    """One namespace on the path, as its firewall sees the packet."""

    netns: Namespace
    way: str  # forward, input, output
    in_iface: str | None
    out_iface: str | None
    firewall: Firewall
    local: frozenset[str] = frozenset()
    #: Each interface's addresses (for MASQUERADE and REDIRECT).
    addresses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: The namespace's bridges and their networks (a container network's source).
    bridges: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.netns.label

    def addresses_of(self, iface: str | None) -> Sequence[str]:
        return self.addresses.get(iface or "", ())


@dataclass(frozen=True)
class Crossing:
    """One segment crossed: the packet's way through its hooks."""

    segment: Segment
    passed: NamespacePass

    @property
    def label(self) -> str:
        return self.segment.label


@dataclass(frozen=True)
class Outcome:
    """Where the packet's way ends: delivered, dropped (where, by what), or off the path."""

    outcome: str  # delivered, dropped, queued, leaves
    text: str
    certain: bool = True
    netns: str | None = None
    drop: DropFinding | None = None


@dataclass(frozen=True)
class Direction:
    packet: PacketView
    crossings: tuple[Crossing, ...]
    outcome: Outcome


@dataclass(frozen=True)
class RulePath:
    """The request's and the reply's ways, and sentences about them."""

    request: Direction
    reply: Direction | None
    notes: tuple[str, ...] = ()


def walk_path(segments: Sequence[Segment], packet: PacketView, arrives: bool = True) -> RulePath:
    """The request from the first segment to the last, and the reply back if it arrives.

    `arrives`: the path reaches its destination (else it leaves the last segment by an
    interface flowtrace cannot follow, and there is no reply to walk).
    """
    request = _direction(segments, packet, [None] * len(segments))
    notes = _routed_notes(request)
    if request.outcome.outcome != "delivered" or not arrives:
        if request.outcome.outcome == "delivered":
            last = segments[-1] if segments else None
            out = f" by {last.out_iface}" if last and last.out_iface else ""
            leaves = Outcome(
                "leaves",
                f"leaves {last.label if last else '?'}{out}: the path goes on where flowtrace "
                "cannot follow it",
                request.outcome.certain,
            )
            request = replace(request, outcome=leaves)
        return RulePath(request, None, tuple(notes))
    back = [_reversed(c.segment) for c in reversed(request.crossings)]
    undo = [c.passed for c in reversed(request.crossings)]
    final = request.crossings[-1].passed.packet if request.crossings else packet
    reply_packet = PacketView(
        final.proto,
        final.dst,
        final.src,
        final.dport,
        final.sport,
        ctstate="ESTABLISHED",
        icmp_type=_ICMP_REPLY.get(final.icmp_type or -1, final.icmp_type),
    )
    reply = _direction(back, reply_packet, undo)
    if not request.outcome.certain:  # the reply's way follows the request's rewrites
        text = f"{reply.outcome.text} (if the request went as shown, which is not certain)"
        reply = replace(reply, outcome=replace(reply.outcome, certain=False, text=text))
    return RulePath(request, reply, tuple(notes))


def _direction(
    segments: Sequence[Segment], packet: PacketView, requests: Sequence[NamespacePass | None]
) -> Direction:
    crossings = []
    current = packet
    for segment, request in zip(segments, requests, strict=True):
        entering = replace(
            current,
            in_iface=segment.in_iface,
            out_iface=segment.out_iface,
            local_addresses=segment.local,
            mark=0,
            ctmark=request.packet.ctmark if request is not None else 0,
            ctstate=packet.ctstate if request is not None else NEW,
        )
        undo = [r for r in request.rewrites if r.rule is not None] if request else []
        passed = traverse(segment.firewall, entering, segment.way, segment.addresses_of, undo)
        crossings.append(Crossing(segment, passed))
        if passed.dropped_at is not None:
            found = first_drop(passed)
            return Direction(packet, tuple(crossings), _dropped(segment, passed, found))
        current = passed.packet
    doubts = [s for c in crossings for s in c.passed.doubts]
    if any(c.passed.verdict == "queue" for c in crossings):
        text = "handed to a userspace queue on the way: what it decides is not in the rules"
        return Direction(packet, tuple(crossings), Outcome("queued", text, False))
    last = segments[-1].label if segments else "?"
    text = f"accepted all the way to {last}"
    if doubts:
        first = doubts[0]
        text += (
            f", unless `{first.rule.shown}` ({first.action}) matched ({maybe_words(first.unknown)})"
        )
    unread = [f"{s.label}'s {what}" for s in segments for what in s.firewall.unread]
    if unread:
        text += f", as far as flowtrace could read ({', '.join(unread)} not read)"
    certain = not doubts and not unread
    return Direction(packet, tuple(crossings), Outcome("delivered", text, certain, last))


def _dropped(segment: Segment, passed: NamespacePass, found: DropFinding | None) -> Outcome:
    if found is None:  # dropped, yet no step says by what: cannot happen, say so plainly
        return Outcome("dropped", f"dropped in {segment.label}", False, segment.label)
    maybe = "" if found.certain else "maybe "
    text = f"{maybe}dropped in {segment.label} at {found.hook} by `{found.rule}`"
    if not found.certain:
        text += f" ({found.doubt})"
    return Outcome("dropped", text, found.certain, segment.label, found)


def _reversed(segment: Segment) -> Segment:
    return replace(
        segment,
        way=_REPLY_WAY[segment.way],
        in_iface=segment.out_iface,
        out_iface=segment.in_iface,
    )


def _routed_notes(request: Direction) -> list[str]:
    """A container's packet leaving its host's bridges unmasqueraded (routed gateway mode)."""
    notes = []
    for crossing in request.crossings:
        segment = crossing.segment
        passed = crossing.passed
        if segment.way != "forward" or passed.dropped_at is not None or not passed.hooks:
            continue
        if segment.firewall.unread or not passed.certain:
            continue  # a MASQUERADE may be among what could not be read or evaluated
        start = passed.hooks[0].packet
        networks = [n for nets in segment.bridges.values() for n in nets]
        leaves_bridges = segment.out_iface not in segment.bridges
        snat = any(r.kind == "SNAT" and r.rule is not None for r in passed.rewrites)
        if start.src and _within(start.src, networks) and leaves_bridges and not snat:
            notes.append(routed_words(start.src, segment.out_iface))
    return notes


def _within(ip: str, networks: Sequence[str]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
        return any(address in ipaddress.ip_network(n, strict=False) for n in networks)
    except ValueError:
        return False


# --- reading the namespaces ------------------------------------------------------------


def segments_of(
    points: Sequence[Point], destination: str | None, ipv6: bool = False
) -> list[Segment]:
    """The namespaces along `points` with the interfaces their rules see (reads each;
    `ipv6`: the IPv6 rules, ip6tables' and nftables' ip6 and inet tables)."""
    groups: list[list[Point]] = []
    for point in points:
        if groups and groups[-1][0].netns.inode == point.netns.inode:
            groups[-1].append(point)
        else:
            groups.append([point])
    segments = []
    for index, group in enumerate(groups):
        ns = group[0].netns
        state = read_state(ns.path)
        try:
            firewall = read_firewall(ns.path, ipv6)
        except MissingToolError:
            raise  # no reader on this machine at all: one line, not one note per namespace
        except FlowtraceError as exc:
            firewall = Firewall(
                notes=(f"rules not readable: {exc.message}",), unread=("iptables", "nftables")
            )
        ends_here = any(p.id == destination for p in group)
        if len(groups) == 1 and ends_here:  # the packet stays in one namespace (lo)
            lo = group[0].ifname
            segments += [
                _segment(ns, state, firewall, None, lo),
                _segment(ns, state, firewall, lo, None),
            ]
            continue
        in_iface = None if index == 0 else _l3(state, group[0])
        out_iface = None if ends_here else _l3(state, group[-1])
        segments.append(_segment(ns, state, firewall, in_iface, out_iface))
    return segments


def _segment(
    ns: Namespace,
    state: NetnsState,
    firewall: Firewall,
    in_iface: str | None,
    out_iface: str | None,
) -> Segment:
    addresses: dict[str, tuple[str, ...]] = {}
    bridges: dict[str, tuple[str, ...]] = {}
    for link in state.links:
        addresses[link.name] = state.addresses_of(link.index)
        if link.kind == "bridge":
            bridges[link.name] = tuple(
                f"{a.ip}/{a.prefixlen}" for a in state.addresses if a.index == link.index
            )
    return Segment(
        ns,
        way_of(in_iface, out_iface),
        in_iface,
        out_iface,
        firewall,
        frozenset(a.ip for a in state.addresses),
        addresses,
        bridges,
    )


def _l3(state: NetnsState, point: Point) -> str:
    """The interface rules match for a point: a bridge port's bridge, else the device."""
    link = state.link(point.ifindex)
    if link is None:
        return point.ifname
    master = state.link(link.master) if link.master is not None else None
    return master.name if master is not None and master.kind == "bridge" else link.name
