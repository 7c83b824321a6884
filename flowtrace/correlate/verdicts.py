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

from flowtrace.correlate.decode import arp_fields
from flowtrace.correlate.faults import fault_from_record, fault_record
from flowtrace.model import DropReason, Frame, Headers, Packet, Sighting, Verdict

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


def icmp_error_text(h: Headers) -> str:
    """An ICMP error in words: 'ICMP host unreachable (type 3 code 1)'."""
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


class NoExplainer:
    """For verdicts decided without the kernel (recorded data): no drop is explained."""

    def lost(self, last: Sighting) -> DropReason | None:
        return None

    def unanswered(self, arrived: Sighting) -> DropReason | None:
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


@dataclass(frozen=True)
class ArpSeen:
    """An ARP frame captured while a probe was out: where, and what it asked or answered."""

    point: str
    op: int  # 1 request, 2 reply
    sender_ip: str
    target_ip: str


def arp_seen(
    frames: Iterable[Frame], point_ids: Sequence[str], start_ns: int, end_ns: int | None
) -> list[ArpSeen]:
    """The ARP frames among `frames` captured in [start_ns, end_ns) (end None: open)."""
    found = []
    for frame in frames:
        if frame.time_ns < start_ns or (end_ns is not None and frame.time_ns >= end_ns):
            continue
        arp = arp_fields(frame.data)
        if arp is not None:
            found.append(ArpSeen(point_ids[frame.point], *arp))
    return found


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
    arp: Sequence[ArpSeen] = (),
) -> Verdict:
    """The verdict of one probe from its packets (those numbered `probe`), in path order.

    `arp`: the ARP frames captured while this probe was out, for a path the walk said is
    blocked (the unanswered request is then the only trace the probe leaves).
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
    if h.proto == 1 and h.icmp_type == 0:
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
    if h.proto == 1 and h.icmp_type == 3 and h.icmp_code == 3:
        # an echo has no port: such an answer comes from a stack that would not forward it
        # (a userspace carrier such as slirp4netns)
        why = f": nothing listens on {facts.dst_port}/{facts.kind}" if facts.dst_port else ""
        return Verdict(probe, "refused", None, f"ICMP port unreachable from {h.src}{why}", rtt)
    if h.proto == 1:
        return Verdict(probe, "unreachable", None, f"{icmp_error_text(h)} from {h.src}", rtt)
    return Verdict(probe, "replied", None, f"{h.proto_name} answer", rtt)


def blocked_verdict(probe: int, facts: ProbeFacts, arp: Sequence[ArpSeen]) -> Verdict | None:
    """A probe the path walk said cannot arrive: the unanswered ARP, and why.

    None when someone did answer the ARP: then the prediction was wrong and the usual
    verdict applies.
    """
    neighbor = facts.blocked_neighbor
    asked: dict[str, int] = {}
    for frame in arp:
        if frame.op == 2 and frame.sender_ip == neighbor:
            return None
        if frame.op == 1 and frame.target_ip == neighbor:
            asked[frame.point] = asked.get(frame.point, 0) + 1
    src = facts.src_label
    if not asked:  # it joined a resolution already under way, or the entry had failed
        return Verdict(probe, "lost", None, f"never left {src}: {facts.blocked_why}")
    rank = {point: i for i, point in enumerate(facts.points)}
    where = sorted(asked, key=lambda point: rank.get(point, len(rank)))
    seen = " and ".join((", ".join(where[:-1]), where[-1])) if len(where) > 1 else where[0]
    return Verdict(
        probe,
        "lost",
        where[-1],
        f"never left {src}: its ARP request for {neighbor} ({max(asked.values())} "
        f"sent, seen at {seen}) was never answered; {facts.blocked_why}",
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
