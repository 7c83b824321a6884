"""What became of each probe, decided from its packets (pure), and verdicts as records.

The decision needs only the probe's correlated packets and a few facts of the plan
(the source and destination points, the probe kind, what the path walk predicted).
Where the packets cannot tell why a request went no further, a `LossExplainer` asks
the kernel (topology.drops does, for a live run); a recorded set reads the verdicts the
trace wrote (`verdict_record`) back with `verdict_from_record`, and sets of schema 1,
which kept `str(Verdict)`, are parsed from that text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from flowtrace.correlate.decode import NDP_ADVERTISEMENT, NDP_SOLICITATION, arp_fields, ndp_fields
from flowtrace.correlate.faults import fault_from_record, fault_record
from flowtrace.model import (
    DropReason,
    Frame,
    Headers,
    Packet,
    Sighting,
    Verdict,
    ip_version,
    is_echo_reply,
)

UNREACHABLE_CODES = {
    0: "network unreachable",
    1: "host unreachable",
    2: "protocol unreachable",
    3: "port unreachable",
    4: "fragmentation needed",
    9: "network administratively prohibited",
    10: "host administratively prohibited",
    13: "communication administratively prohibited (a REJECT rule)",
}


#: ICMPv6 destination unreachable (type 1) codes, RFC 4443 3.1.
UNREACHABLE_CODES6 = {
    0: "no route to destination",
    1: "communication administratively prohibited (a REJECT rule)",
    2: "beyond scope of source address",
    3: "address unreachable (no neighbour answered)",
    4: "port unreachable",
    5: "source address failed ingress/egress policy",
    6: "reject route to destination",
}
_ICMP6_ERROR_NAMES = {2: "packet too big", 3: "time exceeded", 4: "parameter problem"}


def icmp_error_text(h: Headers) -> str:
    """An ICMP error in words: 'ICMP host unreachable (type 3 code 1)'."""
    if h.proto == 58:
        if h.icmp_type == 1:
            what = UNREACHABLE_CODES6.get(h.icmp_code or 0, "destination unreachable")
        else:
            what = _ICMP6_ERROR_NAMES.get(h.icmp_type or 0, f"error type {h.icmp_type}")
        return f"ICMPv6 {what} (type {h.icmp_type} code {h.icmp_code})"
    if h.icmp_type == 3:
        what = UNREACHABLE_CODES.get(h.icmp_code or 0, "destination unreachable")
    elif h.icmp_type == 11:
        what = "time exceeded"
    else:
        what = f"error type {h.icmp_type}"
    return f"ICMP {what} (type {h.icmp_type} code {h.icmp_code})"


class LossExplainer(Protocol):
    """The kernel's side of a verdict: why a request or its answer was dropped."""

    def lost(self, last: Sighting) -> DropReason | None:
        """A request seen last at `last.point`: the rule that dropped it there, if any."""

    def unanswered(self, arrived: Sighting) -> DropReason | None:
        """A request seen arriving at its destination: what dropped it or its answer."""

    def unresolved(self, point: str, sender: str, target: str) -> DropReason | None:
        """A neighbour solicitation (from `sender`, for `target`) seen arriving at `point`
        and never answered: the rule that dropped it there, if any."""


class NoExplainer:
    """For verdicts decided without the kernel (recorded data): no drop is explained."""

    def lost(self, last: Sighting) -> DropReason | None:
        return None

    def unanswered(self, arrived: Sighting) -> DropReason | None:
        return None

    def unresolved(self, point: str, sender: str, target: str) -> DropReason | None:
        return None


@dataclass(frozen=True)
class ProbeFacts:
    """What the plan knew about a trace's probes, as the verdicts need it."""

    source_point: str
    destination: str | None  # the point where the request is delivered, if on the path
    kind: str  # icmp, tcp, udp
    dst_port: int | None = None
    #: Who accepts the connection when no DNAT applies: "docker-proxy pid N (listening on ...)".
    accepted_by: str | None = None
    #: Why a published port is closed at this address (the port's binding), if known.
    closed_hint: str | None = None
    src_label: str = ""
    #: The path walk's prediction that the source cannot reach this neighbour, and why.
    blocked_neighbor: str | None = None
    blocked_why: str | None = None
    #: The path's point ids in order (where an ARP was seen is told in path order).
    points: tuple[str, ...] = ()
    #: The address the source resolves first (the gateway, or an on-link destination),
    #: when the trace captured its neighbour discovery (IPv6: NDP), else None.
    first_hop: str | None = None
    #: The namespace that owns first_hop, by its label, if known.
    first_hop_owner: str | None = None


@dataclass(frozen=True)
class NeighborSeen:
    """An ARP or NDP frame captured while a probe was out: where, what it asked or told.

    op: 1 a question (an ARP request, an NDP neighbour solicitation), 2 an answer (an ARP
    reply, a neighbour advertisement).  For ARP, sender and target are the frame's
    sender and target protocol addresses; for NDP, the IPv6 source and the target
    address (the one asked about, or announced).
    """

    point: str
    op: int
    sender_ip: str
    target_ip: str
    ndp: bool = False
    time_ns: int = 0

    def answers_for(self, ip: str) -> bool:
        """An ARP reply from `ip`, or a neighbour advertisement of it."""
        return self.op == 2 and (self.target_ip if self.ndp else self.sender_ip) == ip

    def asks_for(self, ip: str) -> bool:
        return self.op == 1 and self.target_ip == ip


def neighbor_seen(
    frames: Iterable[Frame], point_ids: Sequence[str], start_ns: int, end_ns: int | None
) -> list[NeighborSeen]:
    """The ARP and NDP frames among `frames` captured in [start_ns, end_ns) (end None:
    open)."""
    found = []
    for frame in frames:
        if frame.time_ns < start_ns or (end_ns is not None and frame.time_ns >= end_ns):
            continue
        arp = arp_fields(frame.data)
        if arp is not None:
            found.append(NeighborSeen(point_ids[frame.point], *arp, time_ns=frame.time_ns))
            continue
        ndp = ndp_fields(frame.data)
        if ndp is not None:
            icmp_type, source, target = ndp
            op = 1 if icmp_type == NDP_SOLICITATION else 2 if icmp_type == NDP_ADVERTISEMENT else 0
            found.append(
                NeighborSeen(point_ids[frame.point], op, source, target, True, frame.time_ns)
            )
    return found


def resolution_words(ip: str) -> tuple[str, str]:
    """(the question, the answer) of neighbour resolution for an address's family."""
    if ip_version(ip) == 6:
        return "neighbour solicitation", "neighbour advertisement"
    return "ARP request", "ARP reply"


def _at(sightings: Iterable[Sighting], point: str) -> int | None:
    for s in sightings:
        if s.point == point:
            return s.time_ns
    return None


def decide(
    probe: int,
    packets: Sequence[Packet],
    facts: ProbeFacts,
    explainer: LossExplainer,
    arp: Sequence[NeighborSeen] = (),
) -> Verdict:
    """The verdict of one probe from its packets (those numbered `probe`), in path order.

    `arp`: the ARP and NDP frames captured while this probe was out (for a path the
    walk said is blocked, and for IPv6 the neighbour discovery of the first hop): when
    a request never leaves the source, the unanswered question is the only trace the
    probe leaves.
    """
    mine = [p for p in packets if p.probe == probe]
    requests = [p for p in mine if p.direction == "request"]
    replies = [p for p in mine if p.direction == "reply"]
    source = facts.source_point
    if facts.blocked_neighbor is not None and not any(_at(r.sightings, source) for r in replies):
        verdict = blocked_verdict(probe, facts, arp)
        if verdict is not None:
            return verdict
    if not requests:
        if facts.first_hop is not None:
            verdict = unresolved_verdict(probe, facts, arp, explainer)
            if verdict is not None:
                return verdict
        return Verdict(probe, "lost", None, "not seen leaving the source")
    request = requests[0]
    start = _at(request.sightings, source)
    for reply in replies:
        end = _at(reply.sightings, source)
        if end is None:
            continue
        rtt = end - start if start is not None else None
        return _answered(probe, reply.first.headers, facts, rtt)
    if replies:
        return Verdict(probe, "lost", replies[0].last.point, "the answer was lost on its way back")
    if facts.destination and any(s.point == facts.destination for s in request.sightings):
        arrived = next(s for s in request.sightings if s.point == facts.destination)
        why = explainer.unanswered(arrived)
        if why is not None:
            return Verdict(probe, "lost", facts.destination, why.text, rule=why.rule)
        return Verdict(probe, "delivered", facts.destination, "no answer came back")
    final = request.last
    why = explainer.lost(final)
    if why is not None:
        return Verdict(probe, "lost", final.point, why.text, rule=why.rule)
    return Verdict(probe, "lost", final.point, f"no sighting after {final.point}")


def _answered(probe: int, h: Headers, facts: ProbeFacts, rtt: int | None) -> Verdict:
    flags = h.tcp_flags or 0
    if is_echo_reply(h):
        return Verdict(probe, "replied", None, "echo reply", rtt)
    if h.proto == 6 and flags & 0x12 == 0x12:
        if facts.accepted_by is not None:
            return Verdict(
                probe, "replied", None, f"SYN-ACK from {facts.accepted_by}: the port is open", rtt
            )
        return Verdict(probe, "replied", None, "SYN-ACK: the port is open", rtt)
    if h.proto == 6 and flags & 0x04:
        closed = f"RST from {h.src}: the port is closed"
        hint = facts.closed_hint
        return Verdict(probe, "refused", None, f"{closed}; {hint}" if hint else closed, rtt)
    port_unreachable = (h.proto, h.icmp_type, h.icmp_code) in ((1, 3, 3), (58, 1, 4))
    if port_unreachable:
        # an echo has no port: such an answer comes from a stack that would not forward it
        # (a userspace carrier such as slirp4netns)
        what = "ICMP" if h.proto == 1 else "ICMPv6"
        why = f": nothing listens on {facts.dst_port}/{facts.kind}" if facts.dst_port else ""
        return Verdict(probe, "refused", None, f"{what} port unreachable from {h.src}{why}", rtt)
    if h.proto in (1, 58):
        return Verdict(probe, "unreachable", None, f"{icmp_error_text(h)} from {h.src}", rtt)
    return Verdict(probe, "replied", None, f"{h.proto_name} answer", rtt)


def _asked(
    neighbor: str, frames: Sequence[NeighborSeen], points: Sequence[str]
) -> tuple[dict[str, int], list[str]] | None:
    """How often the question about `neighbor` was seen at each point, and those points
    in path order; None when an answer came."""
    asked: dict[str, int] = {}
    for frame in frames:
        if frame.answers_for(neighbor):
            return None
        if frame.asks_for(neighbor):
            asked[frame.point] = asked.get(frame.point, 0) + 1
    rank = {point: i for i, point in enumerate(points)}
    return asked, sorted(asked, key=lambda point: rank.get(point, len(rank)))


def _listed(points: Sequence[str]) -> str:
    return " and ".join((", ".join(points[:-1]), points[-1])) if len(points) > 1 else points[0]


def blocked_verdict(probe: int, facts: ProbeFacts, arp: Sequence[NeighborSeen]) -> Verdict | None:
    """A probe the path walk said cannot arrive: the unanswered ARP request (or neighbour
    solicitation), and why.

    None when someone did answer: then the prediction was wrong and the usual verdict
    applies.
    """
    neighbor = facts.blocked_neighbor or ""
    found = _asked(neighbor, arp, facts.points)
    if found is None:
        return None
    asked, where = found
    src = facts.src_label
    if not asked:  # it joined a resolution already under way, or the entry had failed
        return Verdict(probe, "lost", None, f"never left {src}: {facts.blocked_why}")
    question, _ = resolution_words(neighbor)
    return Verdict(
        probe,
        "lost",
        where[-1],
        f"never left {src}: its {question} for {neighbor} ({max(asked.values())} "
        f"sent, seen at {_listed(where)}) was never answered; {facts.blocked_why}",
    )


def unresolved_verdict(
    probe: int, facts: ProbeFacts, frames: Sequence[NeighborSeen], explainer: LossExplainer
) -> Verdict | None:
    """A request that never left the source because its first hop never answered the
    neighbour discovery: the solicitations, where they were seen, and why no
    advertisement came (a rule that dropped them where they arrived).

    None when the first hop did answer, or no question about it was seen (then the
    request was lost for another reason).
    """
    neighbor = facts.first_hop or ""
    found = _asked(neighbor, frames, facts.points)
    if found is None or not found[0]:
        return None
    asked, where = found
    question, answer = resolution_words(neighbor)
    owner = facts.first_hop_owner
    reached = [p for p in where if owner is not None and p.rsplit("/", 1)[0] == owner]
    why: str
    rule = None
    if reached:
        last = next(f for f in reversed(frames) if f.point == reached[0] and f.asks_for(neighbor))
        reason = explainer.unresolved(last.point, last.sender_ip, last.target_ip)
        if reason is not None:
            why, rule = reason.text, reason.rule
        else:
            why = (
                f"they reached {reached[0]} and {owner} sent no {answer} (is {neighbor} "
                "still tentative, or taken by another host?)"
            )
    elif owner is not None:
        why = f"they never reached {owner}, which owns {neighbor}"
    else:
        why = f"no namespace on this machine owns {neighbor}"
    return Verdict(
        probe,
        "lost",
        where[-1],
        f"never left {facts.src_label}: its {question}s for {neighbor} "
        f"({max(asked.values())} sent, seen at {_listed(where)}) got no {answer}: {why}",
        rule=rule,
    )


# --- verdicts as the manifest keeps them --------------------------------------------------


def verdict_record(v: Verdict) -> dict[str, Any]:
    """A verdict as structured data (the manifest's `verdicts[]`, schema 2 on)."""
    return {
        "probe": v.probe,
        "outcome": v.outcome,
        "last_point": v.last_point,
        "detail": v.detail,
        "rule": v.rule,
        "rtt_ns": v.rtt_ns,
        "text": str(v),
        "fault": fault_record(v.fault) if v.fault is not None else None,
    }


_OUTCOMES = ("replied", "refused", "unreachable", "delivered", "lost")
_VERDICT_TEXT = re.compile(
    r"(?P<outcome>replied|refused|unreachable|delivered|lost)"
    r"(?: without reply| after (?P<last>\S+)| before the first point)?"
    r"(?: \((?P<detail>.*)\))?"
)
_RULE_IN_TEXT = re.compile(r"by `(?P<rule>[^`]+)`")


def verdict_from_record(probe: int, record: object, rtt_ns: int | None = None) -> Verdict | None:
    """Read back a verdict the manifest kept; None if it is not one.

    A dict is schema 2's record; a string is schema 1's `str(Verdict)`, whose rule (if
    any) is the one quoted in backticks.  The round trip measured from the set
    (`rtt_ns`) counts only for answered probes, and only where the record has none.
    """
    if isinstance(record, Mapping):
        outcome = record.get("outcome")
        if outcome not in _OUTCOMES:
            return None
        last, detail, rule = record.get("last_point"), record.get("detail"), record.get("rule")
        rtt = record.get("rtt_ns")
        return Verdict(
            probe,
            outcome,
            last if isinstance(last, str) else None,
            detail if isinstance(detail, str) else "",
            _answered_rtt(outcome, rtt if isinstance(rtt, int) else rtt_ns),
            rule if isinstance(rule, str) else None,
            fault_from_record(record.get("fault")),
        )
    if not isinstance(record, str):
        return None
    match = _VERDICT_TEXT.fullmatch(record.strip())
    if match is None:
        return None
    outcome = match["outcome"]
    detail = match["detail"] or ""
    quoted = _RULE_IN_TEXT.search(detail)
    return Verdict(
        probe,
        outcome,  # type: ignore[arg-type]
        match["last"],
        detail,
        _answered_rtt(outcome, rtt_ns),
        quoted["rule"] if quoted else None,
    )


def _answered_rtt(outcome: str, rtt_ns: int | None) -> int | None:
    return rtt_ns if outcome in ("replied", "refused", "unreachable") else None
