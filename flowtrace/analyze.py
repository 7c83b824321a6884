"""Correlate a recorded set offline: flows, packets hop by hop, NAT events, hop latency.

Reads flowtrace's own sets and sets it did not write (a multi-interface pcapng such
as tcpdump captures merged with mergecap; several classic pcaps, one point each).
The pass is a stream: frames are decoded and correlated as they are read, packets are
handed to a callback and dropped, and only per-flow and per-hop summaries (histograms
of fixed size) are kept, so memory does not grow with the set's length.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import pairwise
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from flowtrace.errors import CaptureFormatError, ExitStatus, FlowtraceError, NotFoundError
from flowtrace.model import (
    Address,
    Headers,
    Namespace,
    NatEvent,
    Packet,
    Point,
    PointStats,
    Sighting,
    Trace,
    Verdict,
)

FlowKey = tuple[str, str, int | None, str, int | None]
Outcome = Literal["replied", "delivered", "lost", "refused", "unreachable"]


@dataclass
class FlowSummary:
    key: FlowKey  # (proto, src, sport, dst, dport) as the initiator sent it
    requests: int = 0
    replies: int = 0
    first_ns: int = 0
    last_ns: int = 0
    nat: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        proto, src, sport, dst, dport = self.key
        return {
            "proto": proto,
            "src": src,
            "sport": sport,
            "dst": dst,
            "dport": dport,
            "requests": self.requests,
            "replies": self.replies,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "nat": sorted(self.nat),
        }


@dataclass
class Analysis:
    """What a pass over a set found. `trace` holds packets only when kept (notebooks)."""

    trace: Trace
    frames: int = 0
    undecoded: int = 0
    packet_count: int = 0
    flows: dict[FlowKey, FlowSummary] = field(default_factory=dict)
    nat: dict[tuple[str, str, str, str, str], tuple[NatEvent, int]] = field(default_factory=dict)
    #: (direction, packet kind, from point, to point) -> HopStats: a SYN's hops and its
    #: RST's are told apart (see Headers.kind).
    hops: dict[tuple[str, str, str, str], Any] = field(default_factory=dict)
    truncated: bool = False
    sources: list[str] = field(default_factory=list)
    #: Plain sentences about the set: what looks wrong with it and what to do.
    notes: list[str] = field(default_factory=list)


class Summaries:
    """Folds each packet of a pass into the analysis's flows, NAT rewrites and hop statistics.

    Runs once per packet of captures of millions, so what repeats from packet to
    packet is worked out once: the NAT key of a rewrite (the correlator hands the same
    NatEvent object to every packet of a flow) and the HopStats of each hop of a path.
    """

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis
        #: id(event) -> (event, its key in analysis.nat); the event is held so its id stays its own.
        self._nat_keys: dict[int, tuple[NatEvent, tuple[str, str, str, str, str]]] = {}
        #: (direction, kind, points in path order) -> the HopStats of each hop, in order.
        self._paths: dict[tuple[str, str, tuple[str, ...]], list[Any]] = {}

    def add(self, pkt: Packet) -> None:
        analysis = self.analysis
        sightings = pkt.sightings
        key = _flow_key(pkt)
        flow = analysis.flows.get(key)
        if flow is None:
            flow = analysis.flows[key] = FlowSummary(key, first_ns=sightings[0].time_ns)
        if pkt.direction == "request":
            flow.requests += 1
        else:
            flow.replies += 1
        last_ns = sightings[-1].time_ns
        if last_ns > flow.last_ns:
            flow.last_ns = last_ns
        for ev in pkt.nat:
            flow.nat.add(ev.kind)
            nat_key = self._nat_key(ev)
            seen = analysis.nat.get(nat_key)
            analysis.nat[nat_key] = (ev, (seen[1] if seen else 0) + 1)
        if len(sightings) > 1:
            kind = sightings[0].headers.kind
            path = (pkt.direction, kind, tuple([s.point for s in sightings]))
            hops = self._paths.get(path) or self._hops_of(path)
            before = sightings[0].time_ns
            for stats, s in zip(hops, sightings[1:], strict=True):
                stats.add(s.time_ns - before)
                before = s.time_ns

    def _nat_key(self, ev: NatEvent) -> tuple[str, str, str, str, str]:
        known = self._nat_keys.get(id(ev))
        if known is not None and known[0] is ev:
            return known[1]
        if len(self._nat_keys) >= _SUMMARY_CACHE_LIMIT:
            self._nat_keys.clear()
        key = (ev.kind, ev.between[0], ev.between[1], str(ev.before), str(ev.after))
        self._nat_keys[id(ev)] = (ev, key)
        return key

    def _hops_of(self, path: tuple[str, str, tuple[str, ...]]) -> list[Any]:
        from flowtrace.correlate.stats import HopStats

        if len(self._paths) >= _SUMMARY_CACHE_LIMIT:
            self._paths.clear()
        direction, kind, points = path
        hops = []
        for a, b in pairwise(points):
            stats = self.analysis.hops.get((direction, kind, a, b))
            if stats is None:
                stats = self.analysis.hops[(direction, kind, a, b)] = HopStats()
            hops.append(stats)
        self._paths[path] = hops
        return hops


#: Entries the per-packet caches hold before they start over (memory stays bounded).
_SUMMARY_CACHE_LIMIT = 1 << 14


#: (packet id, kind, point before, point after) -> (rule, conntrack entry)
Explanations = dict[tuple[int, str, str, str], tuple[str | None, str | None]]


def _rewrites_in_manifest(manifest: dict[str, Any] | None) -> Explanations:
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


def _rewrites_off_the_path(
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


def _explain_from_manifest(ev: NatEvent, packet_id: int, explained: Explanations) -> NatEvent:
    rule, conntrack = explained.get((packet_id, ev.kind, *ev.between), (None, None))
    if rule is None and conntrack is None:
        return ev
    return replace(ev, rule=ev.rule or rule, conntrack=ev.conntrack or conntrack)


def _flow_key(pkt: Packet) -> FlowKey:
    s = pkt.first if pkt.direction == "request" else pkt.last
    h = s.headers
    sport = h.sport if h.sport is not None else h.icmp_id
    if pkt.direction == "request":
        return (h.proto_name, h.src, sport, h.dst, h.dport)
    return (h.proto_name, h.dst, h.dport if h.dport is not None else h.icmp_id, h.src, h.sport)


#: Manifest "kind" of a set a trace wrote (a capture's is "capture").
TRACE_KINDS = ("icmp", "tcp", "udp")
#: probe.ProbePlan.seq_mark: probe N's TCP initial sequence number is the mark + N * this.
PROBE_ISN_STEP = 0x10000
_ICMP_ECHO_TYPES = (0, 8)
_TCP_SYN, _TCP_ACK = 0x02, 0x10
_TCP_FIN, _TCP_RST = 0x01, 0x04
_VERDICT_TEXT = re.compile(
    r"(?P<outcome>replied|refused|unreachable|delivered|lost)"
    r"(?: without reply| after (?P<last>\S+)| before the first point)?"
    r"(?: \((?P<detail>.*)\))?"
)
_OUTCOMES: dict[str, Outcome] = {
    "replied": "replied",
    "delivered": "delivered",
    "lost": "lost",
    "refused": "refused",
    "unreachable": "unreachable",
}


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


class ProbeNumbers:
    """Probe numbers of a trace's set, read back from the marks the tracer put in each probe.

    The pcapng stores no probe numbers, but the probes carry them in fields NAT leaves
    alone: an echo request's ICMP sequence number is its probe number (the reply echoes
    it); a TCP probe's initial sequence number is the trace's mark + probe * 0x10000 (the
    SYN-ACK acknowledges ISN + 1, the source's RST continues at ISN + 1), the mark being
    the first SYN's ISN.  An ICMP error takes the number of the packet it quotes.
    Anything else (a UDP datagram; answers carry no mark) belongs to the latest probe
    started before it, since a trace sends one probe at a time and waits for its answer.
    """

    def __init__(self, kind: str, count: int, source: str | None) -> None:
        self.kind = kind
        self.count = count
        self.source = source  # the point probes leave from: the path's first
        self.mark: int | None = None
        self.latest: int | None = None
        self.udp_started = 0
        self.sent_ns: dict[int, int] = {}  # probe -> request seen leaving the source
        self.answered_ns: dict[int, int] = {}  # probe -> first answer back at the source

    @classmethod
    def for_set(cls, manifest: dict[str, Any] | None) -> ProbeNumbers | None:
        """Numbering for a set a trace wrote; None for captures and foreign files."""
        if not manifest:
            return None
        kind, count = manifest.get("kind"), manifest.get("count")
        if kind not in TRACE_KINDS or not isinstance(count, int) or count < 1:
            return None
        points = manifest.get("points") or []
        source = points[0].get("id") if points and isinstance(points[0], dict) else None
        return cls(str(kind), count, source)

    def number(self, pkt: Packet) -> int | None:
        """The probe `pkt` belongs to (packets must come in order of first sighting)."""
        probe = self._marked(pkt.first.headers, pkt.direction)
        if probe is None and self._starts_udp_probe(pkt):
            probe = self.udp_started
            self.udp_started += 1
        if probe is None:
            probe = self.latest
        elif self.latest is None or probe > self.latest:
            self.latest = probe
        if probe is not None:
            self._note_times(pkt, probe)
        return probe

    def _marked(self, h: Headers, direction: str) -> int | None:
        if h.inner is not None:
            return self._marked(h.inner, "quoted")
        if h.proto == 1 and h.icmp_type in _ICMP_ECHO_TYPES and h.icmp_seq is not None:
            return h.icmp_seq if h.icmp_seq < self.count else None
        if h.proto == 6 and h.tcp_seq is not None:
            return self._from_isn(h, direction)
        return None

    def _from_isn(self, h: Headers, direction: str) -> int | None:
        flags = h.tcp_flags
        syn = flags is not None and flags & _TCP_SYN and not flags & _TCP_ACK
        if syn or direction == "quoted":
            isn = h.tcp_seq
        elif direction == "reply" and h.tcp_ack is not None:
            isn = h.tcp_ack - 1
        else:
            isn = (h.tcp_seq or 0) - 1
        if isn is None:
            return None
        if self.mark is None:
            if not syn:
                return None
            self.mark = isn & 0xFFFFFFFF
        offset = (isn - self.mark) & 0xFFFFFFFF
        probe = offset // PROBE_ISN_STEP
        return probe if offset % PROBE_ISN_STEP == 0 and probe < self.count else None

    def _starts_udp_probe(self, pkt: Packet) -> bool:
        return (
            pkt.direction == "request"
            and pkt.first.headers.proto == 17
            and self.source in (None, pkt.first.point)
        )

    def _note_times(self, pkt: Packet, probe: int) -> None:
        at_source = next((s.time_ns for s in pkt.sightings if s.point == self.source), None)
        if at_source is None:
            return
        times = self.sent_ns if pkt.direction == "request" else self.answered_ns
        times.setdefault(probe, at_source)

    def verdicts(self, texts: Sequence[object]) -> tuple[Verdict, ...]:
        """The manifest's verdicts (one text per probe, in order) with round trips measured."""
        verdicts = []
        for probe, text in enumerate(texts):
            sent, answered = self.sent_ns.get(probe), self.answered_ns.get(probe)
            rtt = answered - sent if sent is not None and answered is not None else None
            verdict = verdict_from_text(probe, str(text), rtt)
            if verdict is not None:
                verdicts.append(verdict)
        return tuple(verdicts)


def verdict_from_text(probe: int, text: str, rtt_ns: int | None = None) -> Verdict | None:
    """Read back str(Verdict), the form a trace's manifest keeps; None if it is not one.

    The round trip counts only for probes that were answered ("lost" and "delivered"
    have none, whatever `rtt_ns` says).
    """
    match = _VERDICT_TEXT.fullmatch(text.strip())
    if match is None:
        return None
    outcome = _OUTCOMES[match["outcome"]]
    answered = outcome in ("replied", "refused", "unreachable")
    return Verdict(
        probe, outcome, match["last"], match["detail"] or "", rtt_ns if answered else None
    )


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


def _interface_names(reader: Any, point_names: Sequence[str] | None) -> list[str]:
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


def _points_from(
    reader: Any, manifest: dict[str, Any] | None, point_names: Sequence[str] | None = None
) -> list[Point]:
    by_name = {}
    if manifest:
        for entry in manifest.get("points", []):
            by_name[entry.get("id")] = entry
    points = []
    for iface, name in zip(reader.interfaces, _interface_names(reader, point_names), strict=True):
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


#: Packets looked back on for a repeated fingerprint in a one-point set.
_REPEAT_LOOKBACK = 8


def _merged_note(point: str, repeats: int) -> str:
    return (
        f"{repeats:,} packets show up more than once at {point}: this looks like several "
        "captures merged into one interface; merge tcpdump files "
        "with `mergecap -I none` (then --point-names) or give the pcap files themselves"
    )


def analyze(
    path: str | Path | Sequence[str | Path],
    keep_packets: bool = True,
    on_packet: Callable[[Packet], None] | None = None,
    window_ns: int = 2_000_000_000,
    point_names: Sequence[str] | None = None,
) -> Analysis:
    """One streaming pass over a set; packets go to on_packet (and the trace if kept).

    point_names names the interfaces in file order (and so sets the path order) for
    files whose interfaces carry no useful names.
    """
    with _cyclic_gc_paused():
        return _analyze(path, keep_packets, on_packet, window_ns, point_names)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Keep Python's cycle collector out of the pass.

    The pass makes millions of short-lived objects that hold no reference cycles
    (reference counting frees them), while hundreds of thousands stay alive in the
    correlation window; the collector would walk those again and again, a third of
    the time of a long pass.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


#: Frames whose headers a pass remembers (see _recent_decodings): a ring block of
#: each point of a long path, so that the same frame at the next point is still there.
_RECENT_FRAMES = 1 << 12
_MISSING: Any = object()
#: Sightings handed to the correlator at a time: few enough to keep memory flat, enough
#: that its per-call work is spread thin.
_BATCH = 256


def _recent_decodings(points: Sequence[Point]) -> list[tuple[int, dict[bytes, Headers | None]]]:
    """Per interface: its link type, and the headers of recent frames of that link type.

    A frame crosses several points of a path byte for byte (a container's eth0, its
    veth peer and the bridge see the same Ethernet frame), and decoding depends on
    nothing but the bytes and the link type: looking the frame up costs a hash of its
    bytes, a tenth of decoding it again.
    """
    by_linktype: dict[int, dict[bytes, Headers | None]] = {}
    return [(p.linktype, by_linktype.setdefault(p.linktype, {})) for p in points]


def _analyze(
    path: str | Path | Sequence[str | Path],
    keep_packets: bool,
    on_packet: Callable[[Packet], None] | None,
    window_ns: int,
    point_names: Sequence[str] | None,
) -> Analysis:
    from collections import deque

    from flowtrace.correlate.decode import decode_frame, new_sighting
    from flowtrace.correlate.fingerprint import fingerprint
    from flowtrace.correlate.match import Correlator
    from flowtrace.pcap.pcapset import read_manifest
    from flowtrace.pcap.reader import open_capture

    paths = [path] if isinstance(path, str | Path) else list(path)
    for p in paths:
        if not Path(p).exists():
            raise NotFoundError(f"{p}: no such file or folder")
    manifest = None
    if len(paths) == 1 and Path(paths[0]).is_dir():
        manifest = read_manifest(Path(paths[0]) / "manifest.json")
    reader = open_capture(paths if len(paths) > 1 else paths[0])
    analysis = Analysis(trace=Trace((), ()))
    kept: list[Packet] = []
    # The set's own packet ids by frame, held only until the frame's packet comes out.
    recorded_ids: dict[int, int] = {}
    packet_ids = PacketIds()
    probes = ProbeNumbers.for_set(manifest)
    explained = _rewrites_in_manifest(manifest)
    summaries = Summaries(analysis)
    with reader:
        if point_names is not None and len(point_names) != len(reader.interfaces):
            raise FlowtraceError(
                f"{len(point_names)} point names for {len(reader.interfaces)} interfaces "
                f"({', '.join(i.name for i in reader.interfaces)}): give one name each",
                ExitStatus.USAGE,
            )
        points = _points_from(reader, manifest, point_names)
        order = [p.id for p in points]
        if manifest and manifest.get("points") and point_names is None:
            order = [e["id"] for e in manifest["points"]]
        one_point = len(points) == 1
        early = _rewrites_off_the_path(manifest, [p.id for p in points])
        recent: deque[Any] = deque(maxlen=_REPEAT_LOOKBACK)
        repeats = 0
        no_ids: set[int | None] = {None}

        def packet_done(pkt: Packet) -> None:
            """Runs once per packet: number it, hand it on, fold it into the summaries."""
            nonlocal repeats
            if recorded_ids:
                recorded = {recorded_ids.pop(s.frame_index, None) for s in pkt.sightings}
            else:
                recorded = no_ids
            packet_id = packet_ids.assign(recorded)
            nat = pkt.nat
            direction = pkt.direction
            if explained and nat:
                nat = tuple(_explain_from_manifest(ev, packet_id, explained) for ev in nat)
            if early and packet_id in early:
                nat = (*early[packet_id], *nat)
                if any(ev.reverse_of for ev in early[packet_id]):
                    direction = "reply"  # its rewrite undoes the request's: the answer
            probe = probes.number(pkt) if probes is not None else None
            if packet_id != pkt.packet_id or nat is not pkt.nat or probe is not None:
                pkt = Packet(packet_id, direction, pkt.sightings, nat, probe)
            analysis.packet_count += 1
            if one_point:
                key = fingerprint(pkt.first.headers)
                repeats += key in recent
                recent.append(key)
            if on_packet is not None:
                on_packet(pkt)
            if keep_packets:
                kept.append(pkt)
            summaries.add(pkt)

        # Runs once per frame: everything it touches is a local name.
        correlator = Correlator(order, window_ns)
        correlate = correlator.add_many
        batch: list[Sighting] = []  # handed to the correlator _BATCH at a time
        decoders = _recent_decodings(points)
        names: list[str] = [p.id for p in points]
        frames = undecoded = 0
        missing = _MISSING
        for frames, (interface, time_ns, data, _, outbound, packet_id, _, _) in enumerate(
            reader, 1
        ):
            if interface >= len(names):  # an interface described mid-file
                points = _points_from(reader, manifest, point_names)
                decoders = _recent_decodings(points)
                names = [p.id for p in points]
            linktype, decoded = decoders[interface]
            headers = decoded.get(data, missing)
            if headers is missing:
                if len(decoded) >= _RECENT_FRAMES:
                    decoded.clear()
                headers = decoded[data] = decode_frame(data, linktype)
            if headers is None:
                undecoded += 1
                continue
            if packet_id is not None:
                recorded_ids[frames - 1] = packet_id
            batch.append(new_sighting((names[interface], time_ns, headers, outbound, frames - 1)))
            if len(batch) == _BATCH:
                for pkt in correlate(batch):
                    packet_done(pkt)
                batch.clear()
        for pkt in correlate(batch):
            packet_done(pkt)
        for pkt in correlator.finish():
            packet_done(pkt)
        analysis.frames, analysis.undecoded = frames, undecoded
        analysis.truncated = bool(reader.truncated)
        if one_point and repeats and len(points) == 1:
            analysis.notes.append(_merged_note(points[0].id, repeats))
        analysis.sources = list(reader.sources)
        stats_by_iface = reader.latest_stats()
    if analysis.frames == 0 and not points:
        raise CaptureFormatError(f"{path}: holds no interfaces and no packets")
    point_stats = tuple(
        PointStats(points[i].id, s.received or 0, s.dropped or 0)
        for i, s in sorted(stats_by_iface.items())
        if i < len(points)
    )
    meta: dict[str, object] = {"title": f"flowtrace analyze {path}", "source": str(path)}
    verdicts: tuple[Verdict, ...] = ()
    if manifest:
        meta["manifest"] = manifest
        texts = manifest.get("verdicts")
        if probes is not None and isinstance(texts, list):
            verdicts = probes.verdicts(texts)
    # Path order as the manifest lists it (the file may describe interfaces otherwise).
    rank = {point_id: i for i, point_id in enumerate(order)}
    path_points = sorted(points, key=lambda p: rank.get(p.id, len(rank)))
    analysis.trace = Trace(tuple(path_points), tuple(kept), verdicts, point_stats, meta)
    return analysis


def summary_dict(analysis: Analysis) -> dict[str, Any]:
    """Everything but the packets: flows, NAT events with counts, per-hop statistics."""
    from flowtrace._version import __version__
    from flowtrace.output.jsonout import SCHEMA_VERSION, nat_dict, point_dict

    return {
        "schema": SCHEMA_VERSION,
        "flowtrace": __version__,
        "sources": list(analysis.sources),
        "points": [point_dict(p) for p in analysis.trace.points],
        "frames": analysis.frames,
        "undecoded": analysis.undecoded,
        "packets": analysis.packet_count,
        "truncated": analysis.truncated,
        "flows": [f.as_dict() for f in analysis.flows.values()],
        "nat": [dict(nat_dict(ev), count=n) for ev, n in analysis.nat.values()],
        "hops": [
            dict({"direction": d, "kind": kind, "from": a, "to": b}, **stats.summary())
            for (d, kind, a, b), stats in analysis.hops.items()
        ],
        "stats": [
            {"point": s.point, "packets": s.packets, "drops": s.drops} for s in analysis.trace.stats
        ],
        "notes": list(analysis.notes),
    }


_JSON_TEXT_LIMIT = 1 << 16
_json_texts: dict[str, str] = {}


def _json_text(text: str) -> str:
    """json.dumps of a string, cached: points, protocols and addresses repeat endlessly."""
    encoded = _json_texts.get(text)
    if encoded is None:
        import json

        if len(_json_texts) >= _JSON_TEXT_LIMIT:
            _json_texts.clear()
        encoded = _json_texts[text] = json.dumps(text)
    return encoded


def _json_int(value: int | None) -> str:
    return "null" if value is None else str(value)


_DIRECTION_JSON = {None: "null", True: '"out"', False: '"in"'}

# packet_json's pieces of sighting text, each encoded once: a sighting is
#   {"point": P, "time_ns": T, "proto": ..., "icmp_type": X, "ip_id": I, "ttl": L, "direction": D}
# = _json_heads[P] + T + _json_middles[fields] + I + _json_tails[(L, D)].
_json_heads: dict[str, str] = {}
_json_middles: dict[tuple[object, ...], str] = {}
_json_tails: dict[tuple[int, bool | None], str] = {}
#: id(event) -> (event, its JSON); the event is held so its id stays its own.
_json_nat: dict[int, tuple[NatEvent, str]] = {}
#: The fields _json_middles is keyed by: proto, src, dst, sport, dport, icmp_id, icmp_type.
_middle_fields = itemgetter(*(Headers._fields.index(name) for name in (
    "proto", "src", "dst", "sport", "dport", "icmp_id", "icmp_type",
)))  # fmt: skip


def _bounded(cache: dict[Any, str]) -> dict[Any, str]:
    if len(cache) >= _JSON_TEXT_LIMIT:
        cache.clear()
    return cache


def _json_head(point: str) -> str:
    text = _bounded(_json_heads)[point] = f'{{"point": {_json_text(point)}, "time_ns": '
    return text


def _json_middle(h: Headers) -> str:
    text = _bounded(_json_middles)[_middle_fields(h)] = (
        f', "proto": {_json_text(h.proto_name)}, "src": {_json_text(h.src)}, '
        f'"dst": {_json_text(h.dst)}, "sport": {_json_int(h.sport)}, '
        f'"dport": {_json_int(h.dport)}, "icmp_id": {_json_int(h.icmp_id)}, '
        f'"icmp_type": {_json_int(h.icmp_type)}, "ip_id": '
    )
    return text


def _json_tail(ttl: int, outbound: bool | None) -> str:
    text = _bounded(_json_tails)[(ttl, outbound)] = (
        f', "ttl": {ttl}, "direction": {_DIRECTION_JSON[outbound]}}}'
    )
    return text


def _nat_json(ev: NatEvent) -> str:
    known = _json_nat.get(id(ev))
    if known is not None and known[0] is ev:
        return known[1]
    import json

    from flowtrace.output.jsonout import nat_dict

    if len(_json_nat) >= _JSON_TEXT_LIMIT:
        _json_nat.clear()
    text = json.dumps(nat_dict(ev))
    _json_nat[id(ev)] = (ev, text)
    return text


def packet_json(pkt: Packet) -> str:
    """json.dumps(jsonout.packet_dict(pkt)), character for character, 3x as fast.

    `analyze --json` writes one per packet of captures of millions of packets, where
    building the dicts and encoding them cost as much as correlating.  The text that
    repeats (a point's name; a protocol, address and port set; a TTL and direction;
    a NAT rewrite, which the correlator shares between the packets of a flow) is
    encoded once and reused; only times and IP ids are formatted per sighting.
    """
    heads, middles, tails = _json_heads, _json_middles, _json_tails
    sightings = []
    deltas = []
    before = None
    for point, time_ns, h, outbound, _ in pkt.sightings:
        sightings.append(
            f"{heads.get(point) or _json_head(point)}{time_ns}"
            f"{middles.get(_middle_fields(h)) or _json_middle(h)}{h.ip_id}"
            f"{tails.get((h.ttl, outbound)) or _json_tail(h.ttl, outbound)}"
        )
        if before is not None:
            deltas.append(str(time_ns - before))
        before = time_ns
    nat = ", ".join([_nat_json(ev) for ev in pkt.nat]) if pkt.nat else ""
    return (
        f'{{"id": {pkt.packet_id}, "probe": {_json_int(pkt.probe)}, '
        f'"direction": {_json_text(pkt.direction)}, "sightings": [{", ".join(sightings)}], '
        f'"hop_deltas_ns": [{", ".join(deltas)}], "nat": [{nat}]}}'
    )
