"""Marked probes: built here, sent from a raw socket opened in the source namespace.

The container needs no tools: the socket is created inside its namespace by a thread
that entered it, and the kernel there routes the packet as it would the container's own.
The packets are built with struct rather than scapy: importing scapy.layers.inet takes
1.2 s on this kind of machine (it reads the routing tables through its own netlink
dissector), more than twice the whole time a one-probe trace is allowed; the three
headers below are a few lines each, and the tests check them against scapy.

Every probe of one trace carries a random 32-bit mark that NAT never rewrites, so the
capture filter keeps only the trace's packets among unrelated traffic:
  ICMP echo: the first 4 payload bytes (echoed back in the reply);
  TCP SYN:   the initial sequence number (the SYN-ACK/RST acknowledges mark + 1);
  UDP:       the first 4 payload bytes.
The same marks go into IPv6 probes (ICMPv6 echo, TCP, UDP): NAT66 rewrites addresses
and ports, NPTv6 the address prefix (checksum-neutrally), neither the payload nor the
sequence number.  IPv6 has no IP ID to tell probes apart; `is_request` tells them by
their marks instead.  libpcap's `tcp[]` and `udp[]` read IPv4 only, so the IPv6 filters
read the transport header at its place after a 40-byte IPv6 header (`ip6[40+n]`):
probes and the answers to them carry no extension headers.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import struct
from dataclasses import dataclass
from typing import ClassVar, Protocol

from flowtrace.correlate.probes import isn_of
from flowtrace.endpoints.netns import run_in_netns
from flowtrace.errors import FlowtraceError, NoPathError
from flowtrace.model import Headers, ProbeKind, ip_version, is_echo_request, split_host

#: IP protocol numbers of the probes' transports.
_PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17}
_ICMPV6 = 58
_ICMP6_ERRORS = "(icmp6[0] = 1 or icmp6[0] = 2 or icmp6[0] = 3 or icmp6[0] = 4)"
MAGIC = b"flowtrace"
#: The OS's randomness, as `secrets` uses it, without secrets' import of hmac and OpenSSL.
_random = random.SystemRandom()


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
        check_carried(kind, src_ip, dst_ip)
        mark = _random.getrandbits(32) | 1
        return cls(
            kind=kind,
            src_ip=src_ip,
            dst_ip=dst_ip,
            dport=dport,
            sport=32768 + _random.randrange(28000),
            mark=mark,
            icmp_id=_random.getrandbits(16) or 1,
        )

    def seq_mark(self, seq: int) -> int:
        """The mark of probe number `seq` (TCP needs a distinct ISN per probe)."""
        return isn_of(self.mark, seq)

    @property
    def version(self) -> int:
        """4 or 6: the family of the destination (and so of the probes)."""
        return ip_version(self.dst_ip)

    @property
    def flow_label(self) -> int:
        """The IPv6 flow label the probes carry: 20 bits of the mark (IPv4: none)."""
        return self.mark & 0xFFFFF

    def capture_filter(self, count: int, *, vxlan: bool = False) -> str:
        """A tcpdump expression matching the probes, their answers and ICMP errors; with
        `vxlan`, also inside VXLAN datagrams (an overlay's underlay: libpcap 1.10 has no
        `vxlan` primitive, so the inner packet's fields are read at their offsets; IPv4
        inside, as traces across hosts are)."""
        if self.version == 6:
            return self._capture_filter6(count)
        plain = self._filter(count, _Plain())
        if not vxlan:
            return plain
        inner = self._filter(count, _InVxlan())
        return f"({plain}) or ({_InVxlan.GUARD} and ({inner}))"

    def _filter(self, count: int, at: _Offsets) -> str:
        errors = " or ".join(f"{at.field('icmp', 0, 1)} = {t}" for t in (3, 11, 12))
        icmp_errors = f"({errors})"
        if self.kind == "icmp":
            mark = at.field("icmp", 8, 4)
            return f"{at.proto('icmp')} and ({mark} = {self.mark:#x} or {icmp_errors})"
        if self.kind == "udp":
            return (
                f"({at.proto('udp')} and {at.field('udp', 8, 4)} = {self.mark:#x}) or "
                f"({at.proto('icmp')} and {icmp_errors})"
            )
        terms = []
        for seq in range(count):
            isn = self.seq_mark(seq)
            nxt = (isn + 1) & 0xFFFFFFFF
            seq_field, ack_field = at.field("tcp", 4, 4), at.field("tcp", 8, 4)
            terms.append(
                f"{seq_field} = {isn:#x} or {seq_field} = {nxt:#x} or {ack_field} = {nxt:#x}"
            )
        probes = f"{at.proto('tcp')} and ({' or '.join(terms)})"
        return f"({probes}) or ({at.proto('icmp')} and {icmp_errors})"

    def _capture_filter6(self, count: int) -> str:
        errors = f"(icmp6 and {_ICMP6_ERRORS})"
        if self.kind == "icmp":
            return f"icmp6 and (icmp6[8:4] = {self.mark:#x} or {_ICMP6_ERRORS})"
        if self.kind == "udp":
            return f"(ip6 and ip6[6] = 17 and ip6[48:4] = {self.mark:#x}) or {errors}"
        terms = []
        for seq in range(count):
            isn = self.seq_mark(seq)
            nxt = (isn + 1) & 0xFFFFFFFF
            terms.append(f"ip6[44:4] = {isn:#x} or ip6[44:4] = {nxt:#x} or ip6[48:4] = {nxt:#x}")
        return f"(ip6 and ip6[6] = 6 and ({' or '.join(terms)})) or {errors}"

    def payload(self, seq: int) -> bytes:
        head = struct.pack("!I", self.mark) + MAGIC + struct.pack("!H", seq & 0xFFFF)
        return head + bytes(max(0, self.payload_size - len(head)))

    def is_request(self, h: Headers, seq: int) -> bool:
        """Whether `h` is probe number `seq` (at any point: NAT leaves its marks alone), or
        the quote of it in an ICMP error (which may hold only the first 8 transport bytes)."""
        if self.kind == "icmp":
            mark = struct.pack("!I", self.mark)
            return (
                is_echo_request(h)
                and h.icmp_seq == seq & 0xFFFF
                and (not h.payload_digest or h.payload_digest.startswith(mark))
            )
        if self.kind == "tcp":
            return h.proto == 6 and h.tcp_seq == self.seq_mark(seq) and h.tcp_ack in (0, None)
        head = self.payload(seq)[: len(h.payload_digest)]
        return h.proto == 17 and (not h.payload_digest or h.payload_digest == head)

    def build(self, seq: int) -> bytes:
        """The IP packet of probe number `seq` (IPv4 or IPv6), checksums filled in."""
        proto, segment = self._segment(seq)
        if self.version == 6:
            return ipv6_header(self.src_ip, self.dst_ip, proto, self.flow_label, len(segment)) + (
                segment
            )
        ip_id = _random.getrandbits(16) or 1
        return ipv4_header(self.src_ip, self.dst_ip, proto, ip_id, len(segment)) + segment

    def _segment(self, seq: int) -> tuple[int, bytes]:
        """(IP protocol, the ICMP/ICMPv6, UDP or TCP segment with its checksum)."""
        if self.kind == "icmp":
            body = self.payload(seq)
            if self.version == 6:
                header = struct.pack("!BBHHH", 128, 0, 0, self.icmp_id, seq & 0xFFFF)
                checksum = transport_checksum(self.src_ip, self.dst_ip, _ICMPV6, header + body)
                return _ICMPV6, header[:2] + struct.pack("!H", checksum) + header[4:] + body
            header = struct.pack("!BBHHH", 8, 0, 0, self.icmp_id, seq & 0xFFFF)
            checksum = internet_checksum(header + body)
            return 1, header[:2] + struct.pack("!H", checksum) + header[4:] + body
        if self.kind == "udp":
            body = self.payload(seq)
            length = 8 + len(body)
            header = struct.pack("!HHHH", self.sport, self.dport or 0, length, 0)
            checksum = transport_checksum(self.src_ip, self.dst_ip, 17, header + body) or 0xFFFF
            return 17, header[:6] + struct.pack("!H", checksum) + body
        isn = self.seq_mark(seq)
        options = (
            struct.pack("!BBH", 2, 4, 1460)  # MSS
            + struct.pack("!BB", 4, 2)  # SACK permitted
            + struct.pack("!BBII", 8, 10, isn, 0)  # timestamps: TSval carries the mark
            + struct.pack("!BBBB", 1, 3, 3, 7)  # NOP, window scale 7
        )
        offset_words = (20 + len(options)) // 4
        sport = (self.sport + seq) & 0xFFFF or 1
        header = struct.pack(
            "!HHIIBBHHH", sport, self.dport or 0, isn, 0, offset_words << 4, 0x02, 64240, 0, 0
        )
        segment = header + options
        checksum = transport_checksum(self.src_ip, self.dst_ip, 6, segment)
        return 6, segment[:16] + struct.pack("!H", checksum) + segment[18:]


def neighbor_filter(ip: str) -> str:
    """A tcpdump expression for the neighbour resolution of `ip`: ARP requests and replies
    about it (IPv4), neighbour solicitations and advertisements for it (IPv6, NDP)."""
    if ip_version(ip) == 4:
        value = int(ipaddress.IPv4Address(ip))
        return f"(arp and (arp[24:4] = {value:#x} or arp[14:4] = {value:#x}))"
    raw = ipaddress.IPv6Address(ip).packed
    words = " and ".join(
        f"icmp6[{8 + 4 * i}:4] = {int.from_bytes(raw[4 * i : 4 * i + 4], 'big'):#x}"
        for i in range(4)
    )
    return f"(icmp6 and (icmp6[0] = 135 or icmp6[0] = 136) and {words})"


#: Address families the probes can be built for (IP versions).
CARRIED_FAMILIES = (4, 6)


def check_carried(kind: ProbeKind, src_ip: str, dst_ip: str) -> None:
    """Refuse, in one line, addresses a probe cannot carry (another family, none at all)."""
    name = {"icmp": "ping", "tcp": "tcp", "udp": "udp"}[kind]
    try:
        dst = ipaddress.ip_address(dst_ip)
    except ValueError:
        raise NoPathError(f"cannot send a {name} probe to {dst_ip!r}: not an IP address") from None
    if dst.version not in CARRIED_FAMILIES:
        raise NoPathError(
            f"cannot send a {name} probe to {dst_ip}: flowtrace's probes carry IPv"
            f"{'/'.join(map(str, CARRIED_FAMILIES))} only, not IPv{dst.version}; trace an "
            "IPv4 address of the destination instead"
        )
    try:
        src = ipaddress.ip_address(src_ip)
    except ValueError:
        raise NoPathError(
            f"cannot send a {name} probe to {dst_ip}: the source has no IPv{dst.version} "
            "address to send it from"
        ) from None
    if src.version != dst.version:
        raise NoPathError(
            f"cannot send a {name} probe from {src_ip} to {dst_ip}: the addresses are of "
            "different families"
        )


class _Offsets(Protocol):
    """How a filter names a transport field and tests the protocol."""

    def proto(self, name: str) -> str: ...

    def field(self, proto: str, offset: int, size: int) -> str: ...


class _Plain:
    def proto(self, name: str) -> str:
        return name

    def field(self, proto: str, offset: int, size: int) -> str:
        return f"{proto}[{offset}]" if size == 1 else f"{proto}[{offset}:{size}]"


class _InVxlan:
    """The packet inside a VXLAN datagram: outer UDP header (8), VXLAN header (8), inner
    Ethernet (14), inner IPv4 without options (20), then its transport header."""

    INNER_ETHERTYPE = 8 + 8 + 12
    INNER_IP = 8 + 8 + 14
    INNER_L4 = INNER_IP + 20
    #: UDP to VXLAN's port, carrying IPv4 with a 20-byte header.
    GUARD = f"udp dst port 4789 and udp[{INNER_ETHERTYPE}:2] = 0x0800 and udp[{INNER_IP}] = 0x45"
    NUMBERS: ClassVar[dict[str, int]] = {"icmp": 1, "tcp": 6, "udp": 17}

    def proto(self, name: str) -> str:
        return f"udp[{self.INNER_IP + 9}] = {self.NUMBERS[name]}"

    def field(self, proto: str, offset: int, size: int) -> str:
        where = self.INNER_L4 + offset
        return f"udp[{where}]" if size == 1 else f"udp[{where}:{size}]"


def internet_checksum(data: bytes) -> int:
    """RFC 1071 ones' complement sum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def transport_checksum(src: str, dst: str, proto: int, segment: bytes) -> int:
    """The checksum over the pseudo header of the family (RFC 768/793, RFC 8200 8.1)."""
    if ip_version(dst) == 6:
        pseudo = (
            socket.inet_pton(socket.AF_INET6, src)
            + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!I3xB", len(segment), proto)
        )
    else:
        pseudo = (
            socket.inet_aton(src)
            + socket.inet_aton(dst)
            + struct.pack("!BBH", 0, proto, len(segment))
        )
    return internet_checksum(pseudo + segment)


def ipv6_header(src: str, dst: str, proto: int, flow_label: int, payload_len: int) -> bytes:
    """A 40-byte IPv6 header: traffic class 0, the flow label, hop limit 64."""
    return struct.pack(
        "!IHBB16s16s",
        (6 << 28) | (flow_label & 0xFFFFF),
        payload_len,
        proto,
        64,
        socket.inet_pton(socket.AF_INET6, src),
        socket.inet_pton(socket.AF_INET6, dst),
    )


def ipv4_header(src: str, dst: str, proto: int, ip_id: int, payload_len: int) -> bytes:
    """A 20-byte IPv4 header with DF clear, TTL 64 and its checksum."""
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + payload_len,
        ip_id,
        0,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]


def _open_raw(version: int) -> socket.socket:
    if version == 6:  # IPPROTO_RAW on IPv6 means the header is included (IPV6_HDRINCL)
        return socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    return sock


class RemoteSender:
    """A source on another host: each probe is sent there, by the agent, from a raw
    socket opened in the source's namespace (send_once), as a local one would be.  IPv4
    only (traces across hosts are)."""

    family = socket.AF_INET

    def __init__(self, ns_path: str) -> None:
        self.ns_path = ns_path

    def sendto(self, packet: bytes, address: tuple[str, int] | tuple[str, int, int, int]) -> None:
        run_in_netns(self.ns_path, send_once, packet, address[0])

    def close(self) -> None:
        """Nothing stays open there between probes."""


def send_once(packet: bytes, dst_ip: str) -> None:
    """Send one IPv4 packet from a raw socket of the calling thread's namespace."""
    sock = _open_raw(4)
    try:
        sock.sendto(packet, (dst_ip, 0))
    finally:
        sock.close()


def open_sender(ns_path: str, version: int = 4) -> socket.socket | RemoteSender:
    """A raw IPv4 or IPv6 socket living in the source namespace (routes, neighbour
    resolution and NAT are its); for a source on another host, a sender that sends there
    (IPv4)."""
    if split_host(ns_path)[0] is not None:
        if version != 4:
            raise NoPathError("a probe from another host is sent over IPv4 only")
        return RemoteSender(ns_path)
    try:
        return run_in_netns(ns_path, _open_raw, version)
    except PermissionError:
        from flowtrace.errors import NotRootError

        raise NotRootError("sending a probe needs CAP_NET_RAW: run flowtrace as root") from None


def send_probe(sock: socket.socket | RemoteSender, packet: bytes, dst_ip: str) -> None:
    try:
        sock.sendto(packet, (dst_ip, 0, 0, 0) if sock.family == socket.AF_INET6 else (dst_ip, 0))
    except OSError as exc:
        # EHOSTUNREACH / ENETUNREACH / EPERM (a local OUTPUT rule) are results, not crashes
        raise FlowtraceError(
            f"the source namespace refused to send to {dst_ip}: {os.strerror(exc.errno or 0)}"
        ) from None
