"""Write a trace's pcap set as it goes: trace.pcapng + manifest.json.

The pcapng has one Interface Description Block per point (if_name = point id,
if_description = namespace/container/role, nanosecond timestamps); every sighting of
one packet carries the same epb_packetid (`frame.packet_id == N` in Wireshark shows one
packet's journey) and a comment naming the hop and any rewrite.  Blocks are appended
and flushed probe by probe, and the manifest is rewritten atomically, so Ctrl-C or a
dying container leaves a valid, readable set.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowtrace._version import __version__
from flowtrace.model import Frame, Packet, Point, PointStats
from flowtrace.output.terminal import nat_text

PCAPNG_NAME = "trace.pcapng"


def sighting_comment(pkt: Packet, index: int, points: dict[str, Point]) -> str:
    s = pkt.sightings[index]
    role = points[s.point].role if s.point in points else "?"
    text = (
        f"packet {pkt.packet_id} {pkt.direction} hop {index + 1}/{len(pkt.sightings)} "
        f"at {s.point} ({role})"
    )
    if index > 0:
        text += f", +{(s.time_ns - pkt.sightings[index - 1].time_ns) / 1000:.1f} us"
    changes = [nat_text(ev) for ev in pkt.nat if ev.between[1] == s.point]
    if changes:
        text += "; rewritten: " + "; ".join(changes)
    return text


class TraceRecorder:
    """Appends correlated packets to a pcapng set; valid after every flush."""

    def __init__(
        self,
        directory: Path,
        points: Sequence[Point],
        manifest: dict[str, Any],
        names: Sequence[tuple[str, Sequence[str]]] = (),
    ) -> None:
        from flowtrace.pcap.pcapng import PcapngWriter
        from flowtrace.pcap.pcapset import point_entry

        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / PCAPNG_NAME
        self.points = list(points)
        self._by_id = {p.id: p for p in points}
        self._index = {p.id: i for i, p in enumerate(points)}
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._writer = PcapngWriter(self._file, application=f"flowtrace {__version__}")
        for p in points:
            self._writer.add_interface(
                p.id,
                p.description,
                linktype=p.linktype,
                mac=bytes.fromhex(p.mac.replace(":", "")) if p.mac else None,
            )
        if names:
            self._writer.write_names(names)
        self.manifest = dict(manifest)
        self.manifest.update(
            {
                "flowtrace": __version__,
                "pcapng": PCAPNG_NAME,
                "points": [point_entry(p) for p in points],
                "kernel": platform.release(),
                "python": platform.python_version(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "complete": False,
            }
        )
        self._flush()

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
        self._flush()

    def _flush(self) -> None:
        from flowtrace.pcap.pcapset import write_manifest

        self._writer.flush()
        self._file.flush()
        os.fsync(self._file.fileno())
        write_manifest(self.directory / "manifest.json", self.manifest)

    def close(
        self,
        stats: Sequence[PointStats],
        extra: dict[str, Any] | None = None,
        complete: bool = True,
    ) -> None:
        if self._file.closed:
            return
        now = time.time_ns()
        for s in stats:
            if s.point in self._index:
                self._writer.write_stats(self._index[s.point], now, s.packets, s.drops)
        self.manifest["stats"] = [
            {"point": s.point, "packets": s.packets, "drops": s.drops} for s in stats
        ]
        self.manifest["ended"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.manifest.update(extra or {})
        self.manifest["complete"] = complete
        self._flush()
        self._file.close()
