"""Write a live run's pcap set as it goes: trace.pcapng + manifest.json.

The pcapng has one Interface Description Block per point (if_name = point id,
if_description = namespace/container/role, nanosecond timestamps); every sighting of
one packet carries the same epb_packetid (`frame.packet_id == N` in Wireshark shows one
packet's journey) and a comment naming the hop and any rewrite.  Blocks are appended
and flushed chunk by chunk (a probe's worth), and the manifest is rewritten
atomically, so Ctrl-C or a dying container leaves a valid, readable set.  A write
that fails (a full disk, a read-only file system, the folder removed) ends the
recording, never the run: the file ends on its last whole block, and `close` says
in one line what the set holds.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from flowtrace._version import __version__
from flowtrace.errors import SetWriteError
from flowtrace.model import Frame, Packet, Point, PointStats
from flowtrace.pcap.blocks import BlockWriteError, append_blocks, complete_prefix
from flowtrace.pcap.pcapng import PcapngWriter
from flowtrace.pcap.pcapset import TRACE_FILE, PcapSet, start_manifest


def sighting_comment(pkt: Packet, index: int, points: dict[str, Point]) -> str:
    s = pkt.sightings[index]
    role = points[s.point].role if s.point in points else "?"
    text = (
        f"packet {pkt.packet_id} {pkt.direction} hop {index + 1}/{len(pkt.sightings)} "
        f"at {s.point} ({role})"
    )
    if index > 0:
        text += f", +{(s.time_ns - pkt.sightings[index - 1].time_ns) / 1000:.1f} us"
    changes = [ev.label for ev in pkt.nat if ev.between[1] == s.point]
    if changes:
        text += "; rewritten: " + "; ".join(changes)
    return text


class TraceRecorder:
    """Appends correlated packets to a set's pcapng; the set is valid after every write."""

    def __init__(
        self,
        pcap_set: PcapSet,
        points: Sequence[Point],
        kind: str,
        command: str,
        fields: dict[str, Any],
        names: Sequence[tuple[str, Sequence[str]]] = (),
        descriptions: Mapping[str, str] | None = None,
    ) -> None:
        """`descriptions` replace some points' if_description (a point on another host
        says the clock offset its times were given)."""
        self.set = pcap_set
        self.directory = pcap_set.directory
        self.path = pcap_set.capture_path
        self.points = list(points)
        self._by_id = {p.id: p for p in points}
        self._index = {p.id: i for i, p in enumerate(points)}
        assert pcap_set.capture_fd is not None, "PcapSet.create opens the capture file"
        self._fd: int = pcap_set.capture_fd
        # Blocks are built in memory and appended a chunk at a time, whole.
        self._buffer = io.BytesIO()
        self._writer = PcapngWriter(self._buffer, application=f"flowtrace {__version__}")
        #: Packets (EPBs) the file holds.
        self.packets = 0
        self._closed = False
        for p in points:
            self._writer.add_interface(
                p.id,
                (descriptions or {}).get(p.id, p.description),
                linktype=p.linktype,
                mac=bytes.fromhex(p.mac.replace(":", "")) if p.mac else None,
            )
        if names:
            self._writer.write_names(names)
        self._flush_file()
        if self.stopped:
            raise SetWriteError(
                str(pcap_set.failure_message(0)), pcap_set.failure.errno if pcap_set.failure else 0
            )
        pcap_set.start(start_manifest(kind, command, TRACE_FILE, points, **fields))

    @property
    def stopped(self) -> bool:
        """A write failed: the set takes nothing more."""
        return self.set.failure is not None

    def write(
        self,
        frames: dict[int, Frame],
        packets: Sequence[Packet],
        labels: dict[int, str] | None = None,
    ) -> None:
        """Append these frames: the packets' sightings with ids and comments, then the rest.

        `frames` maps Sighting.frame_index to the captured frame; `labels` (by packet id)
        end a packet's comments (e.g. which leg of a docker-proxy connection it is on).
        """
        if self.stopped:
            return
        written: set[int] = set()
        for pkt in packets:
            for i, s in enumerate(pkt.sightings):
                frame = frames.get(s.frame_index)
                if frame is None or s.frame_index in written:
                    continue
                written.add(s.frame_index)
                self._writer.write_packet(
                    frame.point,
                    frame.time_ns,
                    frame.data,
                    frame.orig_len,
                    outbound=frame.outbound,
                    packet_id=pkt.packet_id,
                    comment=sighting_comment(pkt, i, self._by_id)
                    + (f"; {labels[pkt.packet_id]}" if labels and pkt.packet_id in labels else ""),
                )
        # the rest (an unanswered ARP...) by kernel time: rings hand frames over out of order
        for index, frame in sorted(frames.items(), key=lambda item: (item[1].time_ns, item[0])):
            if index not in written:
                self._writer.write_packet(
                    frame.point, frame.time_ns, frame.data, frame.orig_len, outbound=frame.outbound
                )
        self._flush_file()
        if not self.stopped:
            with contextlib.suppress(SetWriteError):  # noted in the set: recording stops here
                self.set.save()

    def _flush_file(self) -> None:
        """Append what the writer built since last time, whole blocks only, then fsync."""
        blob = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        if self.stopped or not blob:
            return
        try:
            append_blocks(self._fd, blob)
            os.fsync(self._fd)
        except BlockWriteError as err:
            self.packets += err.kept_packets
            self.set.failed(err.errno or 0)
            return
        except OSError as err:  # fsync: the data may not all be on disk
            self.set.failed(err.errno or 0)
        self.packets += complete_prefix(blob, len(blob))[1]

    def close(
        self, stats: Sequence[PointStats], *, complete: bool = True, **extra: Any
    ) -> str | None:
        """Append the kernel's counters, write the last manifest; the failure line, if any."""
        if self._closed:
            return self.set.failure_message(self.packets)
        self._closed = True
        now = time.time_ns()
        for s in stats:
            if s.point in self._index:
                self._writer.write_stats(self._index[s.point], now, s.packets, s.drops)
        self._flush_file()
        if self.stopped:
            extra["error"] = self.set.failure_message(self.packets)
            extra["packets_in_set"] = self.packets
        try:
            self.set.finish(stats, complete=complete, **extra)
        finally:
            self.set.close()
        return self.set.failure_message(self.packets)
