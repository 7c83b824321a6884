"""Marked probes: crafted with scapy, sent from a raw socket opened in the source namespace.

The container needs no tools: the socket is created inside its namespace by a thread
that entered it, and the kernel there routes the packet as it would the container's own.
Every probe of one trace carries a random 32-bit mark that NAT never rewrites, so the
capture filter keeps only the trace's packets among unrelated traffic:
  ICMP echo: the first 4 payload bytes (echoed back in the reply);
  TCP SYN:   the initial sequence number (the SYN-ACK/RST acknowledges mark + 1);
  UDP:       the first 4 payload bytes.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
from dataclasses import dataclass
from typing import Literal

from flowtrace.endpoints.netns import run_in_netns
from flowtrace.errors import FlowtraceError

ProbeKind = Literal["icmp", "tcp", "udp"]
MAGIC = b"flowtrace"


@dataclass(frozen=True)
class ProbePlan:
    """What to send: the same for every probe of a trace except the sequence number."""

    kind: ProbeKind
    src_ip: str
    dst_ip: str
    dport: int | None = None
    sport: int = 0
    mark: int = 0  # 32-bit, random per trace
    icmp_id: int = 0
    payload_size: int = 32

    @classmethod
    def new(cls, kind: ProbeKind, src_ip: str, dst_ip: str, dport: int | None = None) -> ProbePlan:
        if kind in ("tcp", "udp") and not dport:
            raise FlowtraceError(f"a {kind} probe needs a destination port (DST:PORT)")
        mark = secrets.randbits(32) | 1
        return cls(
            kind=kind,
            src_ip=src_ip,
            dst_ip=dst_ip,
            dport=dport,
            sport=32768 + secrets.randbelow(28000),
            mark=mark,
            icmp_id=secrets.randbits(16) or 1,
        )

    def seq_mark(self, seq: int) -> int:
        """The mark of probe number `seq` (TCP needs a distinct ISN per probe)."""
        return (self.mark + seq * 0x10000) & 0xFFFFFFFF

    def capture_filter(self, count: int) -> str:
        """A tcpdump expression matching the probes, their answers and ICMP errors."""
        icmp_errors = "(icmp[0] = 3 or icmp[0] = 11 or icmp[0] = 12)"
        if self.kind == "icmp":
            return f"icmp and (icmp[8:4] = {self.mark:#x} or {icmp_errors})"
        if self.kind == "udp":
            return f"(udp and udp[8:4] = {self.mark:#x}) or (icmp and {icmp_errors})"
        terms = []
        for seq in range(count):
            isn = self.seq_mark(seq)
            nxt = (isn + 1) & 0xFFFFFFFF
            terms.append(f"tcp[4:4] = {isn:#x} or tcp[4:4] = {nxt:#x} or tcp[8:4] = {nxt:#x}")
        return f"(tcp and ({' or '.join(terms)})) or (icmp and {icmp_errors})"

    def payload(self, seq: int) -> bytes:
        head = struct.pack("!I", self.mark) + MAGIC + struct.pack("!H", seq & 0xFFFF)
        return head + bytes(max(0, self.payload_size - len(head)))

    def build(self, seq: int) -> bytes:
        """The IPv4 packet of probe number `seq`, checksums filled in by scapy."""
        from scapy.layers.inet import ICMP, IP, TCP, UDP

        ip = IP(src=self.src_ip, dst=self.dst_ip, id=secrets.randbits(16) or 1, ttl=64)
        if self.kind == "icmp":
            pkt = ip / ICMP(type=8, id=self.icmp_id, seq=seq & 0xFFFF) / self.payload(seq)
        elif self.kind == "udp":
            pkt = ip / UDP(sport=self.sport, dport=self.dport) / self.payload(seq)
        else:
            tsval = self.seq_mark(seq)
            pkt = ip / TCP(
                sport=(self.sport + seq) & 0xFFFF or 1,
                dport=self.dport,
                flags="S",
                seq=self.seq_mark(seq),
                window=64240,
                options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (tsval, 0)), ("WScale", 7)],
            )
        return bytes(pkt)


def _open_raw() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    return sock


def open_sender(ns_path: str) -> socket.socket:
    """A raw IPv4 socket living in the source namespace (routes, ARP and NAT are its)."""
    try:
        return run_in_netns(ns_path, _open_raw)
    except PermissionError:
        from flowtrace.errors import NotRootError

        raise NotRootError("sending a probe needs CAP_NET_RAW: run flowtrace as root") from None


def send_probe(sock: socket.socket, packet: bytes, dst_ip: str) -> None:
    try:
        sock.sendto(packet, (dst_ip, 0))
    except OSError as exc:
        # EHOSTUNREACH / ENETUNREACH / EPERM (a local OUTPUT rule) are results, not crashes
        raise FlowtraceError(
            f"the source namespace refused to send to {dst_ip}: {os.strerror(exc.errno or 0)}"
        ) from None
