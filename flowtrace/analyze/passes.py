"""The pass: correlate a recorded set offline, frame by frame, in constant memory.

Reads flowtrace's own sets and sets it did not write (a multi-interface pcapng such
as tcpdump captures merged with mergecap; several classic pcaps, one point each).
The pass is a stream: frames are decoded and correlated as they are read, packets are
handed to a callback and dropped, and only per-flow and per-hop summaries (histograms
of fixed size) are kept, so memory does not grow with the set's length.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flowtrace.analyze.manifest import (
    PacketIds,
    explain_from_manifest,
    faults_from,
    points_from,
    probe_numbers_for,
    rewrites_in_manifest,
    rewrites_off_the_path,
    verdicts_from,
)
from flowtrace.analyze.summaries import Analysis, Summaries
from flowtrace.correlate.decode import (
    NDP_ADVERTISEMENT,
    NDP_SOLICITATION,
    decode_frame,
    new_sighting,
)
from flowtrace.correlate.fingerprint import fingerprint
from flowtrace.correlate.match import Correlator
from flowtrace.errors import CaptureFormatError, ExitStatus, FlowtraceError, NotFoundError
from flowtrace.model import Headers, Packet, Point, PointStats, Sighting, Trace, Verdict
from flowtrace.pcap.pcapset import MANIFEST_NAME, read_manifest
from flowtrace.pcap.reader import open_capture

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
#: The times a sighting can have (64-bit ns since 1970, as the kernel stamps them);
#: a frame stamped outside them is damage, and the C correlator could not hold it.
_EARLIEST_NS, _LATEST_NS = -(1 << 63), (1 << 63) - 1
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
    paths = [path] if isinstance(path, str | Path) else list(path)
    for p in paths:
        if not Path(p).exists():
            raise NotFoundError(f"{p}: no such file or folder")
    manifest = None
    analysis = Analysis(trace=Trace((), ()))
    if len(paths) == 1 and Path(paths[0]).is_dir():
        try:
            manifest = read_manifest(Path(paths[0]) / MANIFEST_NAME)
        except CaptureFormatError as err:  # the capture itself may still be fine
            analysis.notes.append(f"{err.message}; the manifest is ignored")
    reader = open_capture(paths if len(paths) > 1 else paths[0])
    kept: list[Packet] = []
    # The set's own packet ids by frame, held only until the frame's packet comes out.
    recorded_ids: dict[int, int] = {}
    packet_ids = PacketIds()
    probes = probe_numbers_for(manifest)
    explained = rewrites_in_manifest(manifest)
    summaries = Summaries(analysis)
    with reader:
        if point_names is not None and len(point_names) != len(reader.interfaces):
            raise FlowtraceError(
                f"{len(point_names)} point names for {len(reader.interfaces)} interfaces "
                f"({', '.join(i.name for i in reader.interfaces)}): give one name each",
                ExitStatus.USAGE,
            )
        points = points_from(reader, manifest, point_names)
        order = [p.id for p in points]
        if manifest and manifest.get("points") and point_names is None:
            order = [e["id"] for e in manifest["points"]]
            order += [point_id for point_id in (p.id for p in points) if point_id not in order]
        one_point = len(points) == 1
        early = rewrites_off_the_path(manifest, [p.id for p in points])
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
                nat = tuple(explain_from_manifest(ev, packet_id, explained) for ev in nat)
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
        # Points on several hosts: order each packet by the path, not the hosts' clocks.
        by_path = len({p.netns.host for p in points}) > 1
        correlator = Correlator(order, window_ns, by_path=by_path)
        correlate = correlator.add_many
        batch: list[Sighting] = []  # handed to the correlator _BATCH at a time
        decoders = _recent_decodings(points)
        names: list[str] = [p.id for p in points]
        frames = undecoded = ndp = out_of_time = 0
        missing = _MISSING
        # A trace's set holds the NDP that explains a lost probe; the trace followed no
        # packet of it (nor does analyze, so its packets keep the trace's ids).
        skips_ndp = probes is not None
        ndp_types = (NDP_SOLICITATION, NDP_ADVERTISEMENT)
        for frames, (interface, time_ns, data, _, outbound, packet_id, _, _) in enumerate(
            reader, 1
        ):
            if interface >= len(names):  # an interface described mid-file
                points = points_from(reader, manifest, point_names)
                decoders = _recent_decodings(points)
                names = [p.id for p in points]
            if not _EARLIEST_NS <= time_ns <= _LATEST_NS:
                out_of_time += 1
                continue
            linktype, decoded = decoders[interface]
            headers = decoded.get(data, missing)
            if headers is missing:
                if len(decoded) >= _RECENT_FRAMES:
                    decoded.clear()
                headers = decoded[data] = decode_frame(data, linktype)
            if headers is None:
                undecoded += 1
                continue
            if skips_ndp and headers.proto == 58 and headers.icmp_type in ndp_types:
                ndp += 1
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
        analysis.frames, analysis.undecoded, analysis.ndp_frames = frames, undecoded, ndp
        analysis.truncated = bool(reader.truncated)
        analysis.notes.extend(reader.problems)
        if out_of_time:
            analysis.notes.append(
                f"{out_of_time:,} frames carry a time before 1677 or after 2262 (beyond 64-bit "
                "ns since 1970): damaged timestamps, left out of the correlation"
            )
        missing = [point for point in order if point not in {p.id for p in points}]
        if missing and manifest:
            analysis.notes.append(
                f"the manifest lists points the capture has no interface for: {', '.join(missing)}"
            )
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
        for key in ("hosts", "tunnels"):  # a trace across hosts: their clocks, its overlays
            if manifest.get(key):
                meta[key] = manifest[key]
        if isinstance(manifest.get("kernel"), dict):  # --rules kernel: as a live trace has it
            meta["kernel"] = manifest["kernel"]
        if probes is not None:
            verdicts = verdicts_from(manifest, probes)
    # Path order as the manifest lists it (the file may describe interfaces otherwise).
    rank = {point_id: i for i, point_id in enumerate(order)}
    path_points = sorted(points, key=lambda p: rank.get(p.id, len(rank)))
    analysis.trace = Trace(
        tuple(path_points), tuple(kept), verdicts, point_stats, meta, faults=faults_from(manifest)
    )
    return analysis
