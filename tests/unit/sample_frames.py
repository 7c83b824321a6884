"""Frames built by hand for unit tests: ICMP echo exchanges through a MASQUERADE."""

from __future__ import annotations

import struct

from flowtrace.probe import internet_checksum, ipv4_header

C1_IP, UPLINK_IP, OUTSIDE_IP = "172.17.0.2", "203.0.113.1", "203.0.113.2"
POINTS = ("c1/eth0", "host/docker0", "host/ft-uplink")
START_NS = 1_795_800_000_000_000_000
MAC = b"\x02\x42\xac\x11\x00\x02"


def echo(src: str, dst: str, kind: int, ident: int, seq: int, ip_id: int) -> bytes:
    """An Ethernet frame holding an ICMP echo request (kind 8) or reply (kind 0)."""
    body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + seq.to_bytes(4, "big") * 8
    body = body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]
    return MAC + MAC + b"\x08\x00" + ipv4_header(src, dst, 1, ip_id, len(body)) + body


def snat_ping(pings: int, spacing_ns: int = 10_000_000) -> list[tuple[int, int, bytes]]:
    """(point index, time, frame) of `pings` MASQUERADEd echo exchanges, in time order."""
    frames = []
    for seq in range(pings):
        t = START_NS + seq * spacing_ns
        request, reply = 1000 + seq, 5000 + seq
        inside = echo(C1_IP, OUTSIDE_IP, 8, 77, seq, request)
        outside = echo(UPLINK_IP, OUTSIDE_IP, 8, 77, seq, request)
        answer_outside = echo(OUTSIDE_IP, UPLINK_IP, 0, 77, seq, reply)
        answer_inside = echo(OUTSIDE_IP, C1_IP, 0, 77, seq, reply)
        frames += [
            (0, t, inside),
            (1, t + 10_000, inside),
            (2, t + 60_000, outside),
            (2, t + 100_000, answer_outside),
            (1, t + 110_000, answer_inside),
            (0, t + 115_000, answer_inside),
        ]
    return frames
