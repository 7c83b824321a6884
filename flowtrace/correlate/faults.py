"""Faults named as the cause of lost probes (pure), and faults as records.

A live run watches what can break a path while probes are out: the engine's events for
the containers on it (stopped, restarted, removed, paused), the points' interfaces,
the namespaces.  A probe that went unanswered at or after such a fault was lost to it,
and its verdict says so in words and in `Verdict.fault`, instead of the bare "lost
after X" a loss with no cause gets:

    lost: c2 stopped at 12:01:03.2 (exit 137) while this probe was out; its veth went
    away (host/veth66060ea, c2/eth0); c1 then stopped sending: 172.17.0.3 no longer
    answered ARP (c1's neighbour entry for it: FAILED)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from flowtrace.model import Fault, Verdict

_KINDS = (
    "container-stopped",
    "container-restarted",
    "container-removed",
    "container-paused",
    "engine-gone",
    "interface-gone",
    "netns-gone",
)


def clock(time_ns: int) -> str:
    """12:01:03.2: the local time of day, to a tenth of a second (what `date` shows)."""
    moment = datetime.fromtimestamp(time_ns / 1e9)
    return f"{moment:%H:%M:%S}.{moment.microsecond // 100_000}"


def fault_line(fault: Fault) -> str:
    """A fault as the trace lists it: "c2 stopped at 12:01:03.2 (exit 137)"."""
    head, sep, tail = fault.text.partition(" (")
    return f"{head} at {clock(fault.time_ns)}" + (f" ({tail}" if sep else "")


@dataclass(frozen=True)
class SourceWord:
    """What the source's kernel says about the next hop after the fault (a live run asks)."""

    source: str  # the source's label: "c1"
    next_hop: str  # the address it resolves: the destination or a gateway
    state: str  # its neighbour entry's state: FAILED, INCOMPLETE...


def attribute(
    verdicts: Sequence[Verdict],
    faults: Sequence[Fault],
    windows: Mapping[int, tuple[int, int]],
    source_point: str,
    source_word: SourceWord | None = None,
) -> list[Verdict]:
    """The verdicts, those of unanswered probes lost at or after a fault rewritten to name it.

    windows: probe -> (sent, end of its wait) in ns.  A probe is put down to the first
    fault that happened before its wait ended; the interfaces that went away with it
    and, for a probe that never left the source, the source's unanswered ARP follow.
    """
    if not faults:
        return list(verdicts)
    ordered = sorted(faults, key=lambda f: f.time_ns)
    answered = {v.probe for v in verdicts if v.answered}
    out = []
    for v in verdicts:
        window = windows.get(v.probe)
        if v.answered or window is None or v.outcome not in ("lost", "delivered"):
            out.append(v)
            continue
        _, end = window
        cause = next((f for f in ordered if f.time_ns <= end and f.kind != "interface-gone"), None)
        cause = cause or next((f for f in ordered if f.time_ns <= end), None)
        if cause is None:
            out.append(v)
            continue
        parts = [fault_line(cause) + _when(cause, v.probe, windows, answered)]
        gone = [
            f for f in ordered if f.kind == "interface-gone" and f is not cause and f.time_ns <= end
        ]
        if gone:
            points = ", ".join(f.subject for f in gone)
            own = cause.kind.startswith("container-") and any(
                set(f.points) & set(cause.points) for f in gone
            )
            parts.append(f"its veth went away ({points})" if own else f"{points} went away")
        if v.detail.startswith("not sent:"):
            parts.append(v.detail)
        elif source_word is not None and v.last_point in (None, source_point):
            parts.append(
                f"{source_word.source} then stopped sending: {source_word.next_hop} no longer "
                f"answered ARP ({source_word.source}'s neighbour entry for it: "
                f"{source_word.state})"
            )
        out.append(replace(v, outcome="lost", detail="; ".join(parts), fault=cause))
    return out


def _when(
    fault: Fault, probe: int, windows: Mapping[int, tuple[int, int]], answered: set[int]
) -> str:
    """Where the fault falls among the probes: while this one was out, or which one."""
    for other, (start, end) in sorted(windows.items()):
        if start <= fault.time_ns < end or (other == probe and fault.time_ns >= start):
            if other == probe:
                return " while this probe was out"
            if other in answered:
                return f", after probe {other + 1} was answered"
            return f", during probe {other + 1}"
    return ", before the first probe was sent"


# --- faults as the manifest keeps them ------------------------------------------------------


def fault_record(f: Fault) -> dict[str, Any]:
    return {
        "time_ns": f.time_ns,
        "kind": f.kind,
        "subject": f.subject,
        "text": f.text,
        "points": list(f.points),
        "exit_code": f.exit_code,
        "line": fault_line(f),
    }


def fault_from_record(record: object) -> Fault | None:
    """A fault the manifest kept; None if the record is not one."""
    if not isinstance(record, Mapping):
        return None
    kind, time_ns = record.get("kind"), record.get("time_ns")
    subject, text = record.get("subject"), record.get("text")
    if kind not in _KINDS or not isinstance(time_ns, int) or isinstance(time_ns, bool):
        return None
    if not isinstance(subject, str) or not isinstance(text, str):
        return None
    points = record.get("points")
    exit_code = record.get("exit_code")
    return Fault(
        time_ns,
        kind,
        subject,
        text,
        tuple(p for p in points if isinstance(p, str)) if isinstance(points, list) else (),
        exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else None,
    )
