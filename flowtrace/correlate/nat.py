"""NAT seen from the outside: diff the tuple between neighbouring sightings.

A packet seen at two neighbouring points with a different source (address or
port) was source-NATed between them, with a different destination destination-
NATed; both can happen between the same two points.  For ICMP echo the
identifier plays the part of a port on the requester's side (the source of a
request, the destination of a reply), as it does for conntrack.

Netfilter never runs a reply through the nat chains: a reply is only put back,
so its rewrite undoes the request's (the reply to a MASQUERADEd ping gets its
destination restored: a DNAT that is the reverse of an SNAT).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from operator import itemgetter

from flowtrace.model import Address, Direction, Headers, NatEvent, NatKind, Packet, Sighting

_OPPOSITE: dict[NatKind, NatKind] = {"SNAT": "DNAT", "DNAT": "SNAT"}


def nat_ends(h: Headers, direction: Direction) -> tuple[str, int | None, str, int | None]:
    """(source address, source port, destination address, destination port) as NAT sees them."""
    if h.icmp_id is None:
        return _port_ends(h)
    if direction == "request":
        return h.src, h.icmp_id, h.dst, None
    return h.src, None, h.dst, h.icmp_id


#: (src, sport, dst, dport) of a Headers tuple, picked in C: runs once per sighting.
_port_ends = itemgetter(*(Headers._fields.index(name) for name in ("src", "sport", "dst", "dport")))


#: A rewrite in plain values: (kind, address before, port before, address after, port after).
Rewrite = tuple[NatKind, str, int | None, str, int | None]


def nat_events(
    sightings: Sequence[Sighting],
    direction: Direction,
    undone: Mapping[Rewrite, NatKind] | None = None,
    memo: dict[tuple[object, ...], NatEvent] | None = None,
) -> tuple[NatEvent, ...]:
    """The rewrites between every two neighbouring sightings (in path order).

    `undone` (from undo_rewrites of the request's events) marks the rewrites of a
    reply that put the request's back.  `memo` lets a caller that sees the same
    rewrite on every packet of a flow share one NatEvent object between them.
    """
    if len(sightings) < 2:
        return ()
    events: list[NatEvent] = []
    before = sightings[0]
    ends = nat_ends(before.headers, direction)
    for after in sightings[1:]:
        ends_after = nat_ends(after.headers, direction)
        if ends_after != ends:  # most hops rewrite nothing: one comparison tells
            src, sport, dst, dport = ends
            src2, sport2, dst2, dport2 = ends_after
            if src2 != src or sport2 != sport:
                events.append(
                    _event(
                        "SNAT", before.point, after.point, src, sport, src2, sport2, undone, memo
                    )
                )
            if dst2 != dst or dport2 != dport:
                events.append(
                    _event(
                        "DNAT", before.point, after.point, dst, dport, dst2, dport2, undone, memo
                    )
                )
        before, ends = after, ends_after
    return tuple(events)


def _event(
    kind: NatKind,
    point_before: str,
    point_after: str,
    ip: str,
    port: int | None,
    new_ip: str,
    new_port: int | None,
    undone: Mapping[Rewrite, NatKind] | None,
    memo: dict[tuple[object, ...], NatEvent] | None,
) -> NatEvent:
    reverse_of = undone.get((kind, ip, port, new_ip, new_port)) if undone else None
    key = (kind, point_before, point_after, ip, port, new_ip, new_port, reverse_of)
    event = memo.get(key) if memo is not None else None
    if event is None:
        event = NatEvent(
            kind,
            (point_before, point_after),
            Address(ip, port),
            Address(new_ip, new_port),
            reverse_of=reverse_of,
        )
        if memo is not None:
            memo[key] = event
    return event


def undo_rewrites(request_events: Iterable[NatEvent]) -> dict[Rewrite, NatKind]:
    """The rewrites a reply carries when it undoes these, each with the kind it undoes.

    A port missing on the reply's side (an ICMP error has none) still counts.
    """
    rewrites: dict[Rewrite, NatKind] = {}
    for ev in request_events:
        opposite = _OPPOSITE[ev.kind]
        before, after = ev.before, ev.after
        rewrites[(opposite, after.ip, after.port, before.ip, before.port)] = ev.kind
        rewrites[(opposite, after.ip, None, before.ip, None)] = ev.kind
    return rewrites


def _rewrite(ev: NatEvent) -> Rewrite:
    return (ev.kind, ev.before.ip, ev.before.port, ev.after.ip, ev.after.port)


def undoes(reply_event: NatEvent, request_event: NatEvent) -> bool:
    """True when a reply's rewrite puts back what a request's rewrite changed."""
    return _rewrite(reply_event) in undo_rewrites((request_event,))


def mark_reverse(
    reply_events: Iterable[NatEvent], request_events: Iterable[NatEvent]
) -> tuple[NatEvent, ...]:
    """The reply's events, each that undoes one of the request's marked `reverse_of`."""
    undone = undo_rewrites(request_events)
    marked = []
    for ev in reply_events:
        kind = undone.get(_rewrite(ev))
        if kind is not None and ev.reverse_of != kind:
            ev = replace(ev, reverse_of=kind)
        marked.append(ev)
    return tuple(marked)


def annotate_reverse(request: Packet, reply: Packet) -> Packet:
    """The reply, its rewrites that undo the request's marked `reverse_of`."""
    if not reply.nat or not request.nat:
        return reply
    return replace(reply, nat=mark_reverse(reply.nat, request.nat))
