"""What a set's manifest adds to its pcapng, read back for `flowtrace analyze` and load().

A pcapng has no place for a rewrite's rule and conntrack entry, for rewrites no two
sightings show (the source's own nat OUTPUT), for the probes' verdicts or for the
points' roles and namespaces: the trace keeps them in manifest.json.  Everything here
tolerates a manifest of another shape (a field it cannot read is left out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from flowtrace.correlate.faults import fault_from_record
from flowtrace.correlate.probes import ProbeNumbers
from flowtrace.correlate.verdicts import verdict_from_record
from flowtrace.errors import ExitStatus, FlowtraceError
from flowtrace.model import Address, Fault, Namespace, NatEvent, Point, Verdict

#: Manifest "kind" of a set a trace wrote (a capture's is "capture", a lookup's "dns").
TRACE_KINDS = ("icmp", "tcp", "udp")


#: (packet id, kind, point before, point after) -> (rule, conntrack entry)
Explanations = dict[tuple[int, str, str, str], tuple[str | None, str | None]]


def rewrites_in_manifest(manifest: dict[str, Any] | None) -> Explanations:
    """The rule and conntrack entry the tracer found for each rewrite.

    A pcapng has no place for them, so the tracer keeps them in the manifest.
    """
    found: Explanations = {}
    for entry in (manifest or {}).get("nat") or []:
        try:
            before, after = entry["between"]
            key = (int(entry["packet"]), str(entry["kind"]), str(before), str(after))
        except (KeyError, TypeError, ValueError):
            continue
        found[key] = (entry.get("rule"), entry.get("conntrack"))
    return found


def rewrites_off_the_path(
    manifest: dict[str, Any] | None, point_ids: Sequence[str]
) -> dict[int, tuple[NatEvent, ...]]:
    """Rewrites the tracer saw happen before a packet's first point or after its last, by
    packet id.

    The host's own nat OUTPUT (a published port from the host, Docker's embedded DNS in a
    container) rewrites a packet before any interface sees it, and its reply is put back
    after the last one, so no two sightings differ: only the manifest knows.  One side of
    their `between` names no point of the set.
    """
    known = set(point_ids)
    found: dict[int, tuple[NatEvent, ...]] = {}
    for entry in (manifest or {}).get("nat") or []:
        try:
            before, after = (str(b) for b in entry["between"])
            if (before in known) == (after in known):
                continue  # between two points: the sightings show it
            event = NatEvent(
                entry["kind"],
                (before, after),
                Address(str(entry["before"]["ip"]), entry["before"].get("port")),
                Address(str(entry["after"]["ip"]), entry["after"].get("port")),
                entry.get("rule"),
                entry.get("conntrack"),
                entry.get("reverse_of"),
            )
            packet_id = int(entry["packet"])
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        found[packet_id] = (*found.get(packet_id, ()), event)
    return found


def explain_from_manifest(ev: NatEvent, packet_id: int, explained: Explanations) -> NatEvent:
    rule, conntrack = explained.get((packet_id, ev.kind, *ev.between), (None, None))
    if rule is None and conntrack is None:
        return ev
    return replace(ev, rule=ev.rule or rule, conntrack=ev.conntrack or conntrack)


class PacketIds:
    """Packet ids as the set recorded them (epb_packetid), else fresh ones; never repeated.

    Keeping the recorded id makes packet N of a loaded trace the packet that Wireshark's
    `frame.packet_id == N` shows.  Ids only grow: a packet keeps its recorded id when
    all its sightings carry that one id and it is above every id handed out so far
    (always so in a set flowtrace wrote), so staying unique needs no memory.
    """

    def __init__(self) -> None:
        self.highest = 0

    def assign(self, recorded: set[int | None]) -> int:
        only = next(iter(recorded)) if len(recorded) == 1 else None
        self.highest = only if only is not None and only > self.highest else self.highest + 1
        return self.highest


def probe_numbers_for(manifest: dict[str, Any] | None) -> ProbeNumbers | None:
    """Numbering for a set a trace wrote; None for captures and foreign files."""
    if not manifest:
        return None
    kind, count = manifest.get("kind"), manifest.get("count")
    if kind not in TRACE_KINDS or not isinstance(count, int) or count < 1:
        return None
    points = manifest.get("points") or []
    source = points[0].get("id") if points and isinstance(points[0], dict) else None
    # a docker-proxy's legs carry no mark: as in the live run, they belong to no probe
    return ProbeNumbers(
        str(kind), count, source, unmarked_tcp_is_foreign=bool(manifest.get("proxy"))
    )


def verdicts_from(manifest: dict[str, Any], numbers: ProbeNumbers) -> tuple[Verdict, ...]:
    """The manifest's verdicts (schema 2: records; 1: texts), round trips measured anew
    where the record has none."""
    records = manifest.get("verdicts")
    if not isinstance(records, list):
        return ()
    verdicts = []
    for index, record in enumerate(records):
        probe = index
        if isinstance(record, dict) and isinstance(record.get("probe"), int):
            probe = record["probe"]
        verdict = verdict_from_record(probe, record, numbers.rtt_ns(probe))
        if verdict is not None:
            verdicts.append(verdict)
    return tuple(verdicts)


def faults_from(manifest: dict[str, Any] | None) -> tuple[Fault, ...]:
    """What broke the path during the run the set recorded (the manifest's `faults`)."""
    records = (manifest or {}).get("faults")
    if not isinstance(records, list):
        return ()
    found = (fault_from_record(record) for record in records)
    return tuple(f for f in found if f is not None)


def parse_point_names(text: str) -> list[str]:
    """`c1/eth0,host/docker0` -> the names, refusing empty or repeated ones (exit status 2)."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise FlowtraceError(
            f"bad point names {text!r}: give NAME,NAME,... one per interface, none empty",
            ExitStatus.USAGE,
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise FlowtraceError(
            f"bad point names {text!r}: {', '.join(repeated)} given twice", ExitStatus.USAGE
        )
    return names


def interface_names(reader: Any, point_names: Sequence[str] | None) -> list[str]:
    """The point id of each interface: the name given, else its own, made unique."""
    names: list[str] = []
    for iface in reader.interfaces:
        name = iface.name
        if point_names is not None and iface.index < len(point_names):
            name = point_names[iface.index]
        base, number = name, 2
        while name in names:  # two files may name an interface alike ("eth0")
            name = f"{base}#{number}"
            number += 1
        names.append(name)
    return names


def points_from(
    reader: Any, manifest: dict[str, Any] | None, point_names: Sequence[str] | None = None
) -> list[Point]:
    by_name = {}
    if manifest:
        for entry in manifest.get("points", []):
            by_name[entry.get("id")] = entry
    points = []
    for iface, name in zip(reader.interfaces, interface_names(reader, point_names), strict=True):
        info = by_name.get(name, {})
        label = info.get("netns") or (name.split("/", 1)[0] if "/" in name else "")
        ns = Namespace("", label or name, 0, info.get("container"))
        ifname = info.get("ifname") or name.rsplit("/", 1)[-1]
        points.append(
            Point(
                name,
                ns,
                ifname,
                iface.index,
                info.get("role", "named"),
                linktype=iface.linktype,
                mac=info.get("mac"),
                addresses=tuple(info.get("addresses") or ()),
            )
        )
    return points
