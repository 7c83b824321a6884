"""Raw frame bytes -> Headers, with struct and nothing else.

This is the per-frame path of `flowtrace analyze` over multi-million-frame captures,
so it avoids scapy (about 100x slower) and allocates little: one struct unpack per
header, address strings from a small cache, one Headers object per frame.  Anything
that is not IP, or is cut short or malformed, yields None instead of an exception.

The payload digest is the first PAYLOAD_DIGEST_BYTES bytes of the transport payload
themselves, not a hash: the fields that tell datagrams of one flow apart (ping
timestamps, DNS ids, RTP/QUIC/WireGuard counters) sit at the start of the payload,
IP total length already covers the size, it is a single slice (a crc32 costs 3x and
blake2b 20x more per frame here), and a capture with a small snaplen still yields
the same digest at every point.  A fragment other than the first has no transport
header and shares every other field with its siblings, so its digest starts with
its fragment offset.

decode_frame is the C one of flowtrace/correlate/_framedecode.c when it is built (see
flowtrace.native; FLOWTRACE_NATIVE=0 turns it off), else decode_frame_python.  The
Python one is the reference and the fallback: the C one hands it ICMP errors and UDP
to VXLAN's port, and tests hold the two equal.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from functools import partial
from typing import Protocol

from flowtrace import native
from flowtrace.model import Headers, Sighting, Tunnel

#: pcap LINKTYPE_* values decode_frame understands.
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in host byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108  # OpenBSD loopback: address family in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

PAYLOAD_DIGEST_BYTES = 16
#: VXLAN's UDP port (IANA; what Docker's overlay and Linux use): decoded to the inner packet.
VXLAN_PORT = 4789

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_VLAN_TAGS = frozenset((0x8100, 0x88A8, 0x9100))
_MAX_VLAN_TAGS = 4

_PROTO_ICMP = 1
_PROTO_TCP = 6
_PROTO_UDP = 17
_PROTO_ICMPV6 = 58
_PROTO_SCTP = 132
_PROTO_UDPLITE = 136
_PORT_PROTOCOLS = frozenset((_PROTO_UDP, _PROTO_UDPLITE, _PROTO_SCTP))
_ICMP_PROTOCOLS = frozenset((_PROTO_ICMP, _PROTO_ICMPV6))

#: ICMP types whose body quotes the IP header and 8 bytes of the packet they answer.
_ICMP4_ERRORS = frozenset((3, 4, 5, 11, 12))
_ICMP4_ECHO = frozenset((0, 8, 13, 14, 15, 16, 17, 18))
_ICMP6_ERRORS = frozenset((1, 2, 3, 4))
_ICMP6_ECHO = frozenset((128, 129))

#: IPv6 extension headers skipped on the way to the transport header.
_IP6_EXT_OPTS = frozenset((0, 43, 60, 135, 139, 140))  # length in 8-octet units after the first
_IP6_FRAGMENT = 44
_IP6_AH = 51  # length in 4-octet units, minus 2
_IP6_NO_NEXT = 59
_MAX_IP6_EXT = 8

#: AF_INET6 as the NULL/LOOP link types write it on Linux, the BSDs and macOS.
_NULL_AF_INET6 = frozenset((10, 24, 28, 30))

_IP4 = struct.Struct("!BxHHHBB2x4s4s")
_IP6 = struct.Struct("!I HBB 16s16s")
_IP6_FRAG = struct.Struct("!BxHI")
_PORTS = struct.Struct("!HH")
_TCP = struct.Struct("!HHIIBB")
_TCP_QUOTED = struct.Struct("!HHI")
_ICMP = struct.Struct("!BB2xHH")
_FRAG_OFFSET = struct.Struct("!H")


#: Headers from a tuple of all its fields, built in C: the named tuple's own __new__ is
#: a Python function, four times slower, and decoding makes one per frame.
_new_headers: Callable[[tuple[object, ...]], Headers] = partial(tuple.__new__, Headers)
#: Sighting from (point, time_ns, headers, outbound, frame_index), the same way.
new_sighting: Callable[[tuple[object, ...]], Sighting] = partial(tuple.__new__, Sighting)

_ADDRESS_CACHE_LIMIT = 1 << 16
_address_cache: dict[bytes, str] = {}


def _address(raw: bytes) -> str:
    """Text of a 4- or 16-byte address; a bounded cache saves inet_ntop per frame."""
    text = _address_cache.get(raw)
    if text is None:
        if len(_address_cache) >= _ADDRESS_CACHE_LIMIT:
            _address_cache.clear()
        family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
        text = _address_cache[raw] = socket.inet_ntop(family, raw)
    return text


def decode_frame_python(
    data: bytes | memoryview, linktype: int = LINKTYPE_ETHERNET
) -> Headers | None:
    """The IP and transport headers of one captured frame, or None if it has none."""
    if type(data) is not bytes:
        data = bytes(data)
    try:
        if linktype == LINKTYPE_ETHERNET and data[12] == 0x08 and data[13] == 0x00:
            return _ipv4(data, 14, len(data), False)  # the usual frame, without _decode's tests
        return _decode(data, linktype)
    except (IndexError, struct.error, ValueError):
        return None


class FrameDecoder(Protocol):
    """decode_frame's signature (the C function has no Python signature of its own)."""

    def __call__(
        self, data: bytes | memoryview, linktype: int = LINKTYPE_ETHERNET
    ) -> Headers | None: ...


#: The C decoder (flowtrace/correlate/_framedecode.c), or None: not built, or turned off.
_framedecode = native.load("flowtrace.correlate._framedecode")
#: The IP and transport headers of one captured frame, or None if it has none: in C for
#: all but ICMP errors and UDP to port 4789, which it hands to decode_frame_python.
decode_frame: FrameDecoder = decode_frame_python
if _framedecode is not None:
    _framedecode.init(Headers, decode_frame_python)
    decode_frame = _framedecode.decode_frame


def _decode(data: bytes, linktype: int) -> Headers | None:
    size = len(data)
    if linktype == LINKTYPE_ETHERNET:
        if size < 14:
            return None
        ethertype = (data[12] << 8) | data[13]
        offset = 14
    elif linktype == LINKTYPE_LINUX_SLL:
        if size < 16:
            return None
        ethertype = (data[14] << 8) | data[15]
        offset = 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if size < 20:
            return None
        ethertype = (data[0] << 8) | data[1]
        offset = 20
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if size < 1:
            return None
        version = data[0] >> 4
        if version == 4:
            return _ipv4(data, 0, size, False)
        if version == 6:
            return _ipv6(data, 0, size, False)
        return None
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if size < 4:
            return None
        family = int.from_bytes(data[:4], "big")
        if family > 0xFFFF:  # written in little-endian host order
            family = int.from_bytes(data[:4], "little")
        if family == 2:
            return _ipv4(data, 4, size, False)
        if family in _NULL_AF_INET6:
            return _ipv6(data, 4, size, False)
        return None
    else:
        return None
    tags = 0
    while ethertype in _VLAN_TAGS and tags < _MAX_VLAN_TAGS:
        ethertype = (data[offset + 2] << 8) | data[offset + 3]
        offset += 4
        tags += 1
    if ethertype == _ETH_IPV4:
        return _ipv4(data, offset, size, False)
    if ethertype == _ETH_IPV6:
        return _ipv6(data, offset, size, False)
    return None


def _ipv4(data: bytes, offset: int, size: int, quoted: bool) -> Headers | None:
    """IPv4 at `offset`; `quoted` is the header inside an ICMP error (may be cut short)."""
    version_ihl, total, ip_id, frag, ttl, proto, src, dst = _IP4.unpack_from(data, offset)
    header_len = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or header_len < 20:
        return None
    start = offset + header_len
    if start > size:
        return None
    if quoted or total == 0:  # total 0: a segmentation-offloaded super-packet
        end = size
    else:
        if total < header_len:
            return None
        end = min(offset + total, size)
    fragment_offset = frag & 0x1FFF
    if fragment_offset:  # not the first fragment: no transport header
        digest = _FRAG_OFFSET.pack(fragment_offset) + data[start : start + 14]
        return Headers(
            4, _address(src), _address(dst), proto, ip_id, ttl, total, payload_digest=digest
        )
    cache = _address_cache
    return _transport(
        data, start, end, 4, cache.get(src) or _address(src), cache.get(dst) or _address(dst),
        proto, ip_id, ttl, total, quoted,
    )  # fmt: skip


def _ipv6(data: bytes, offset: int, size: int, quoted: bool) -> Headers | None:
    """IPv6 at `offset`, skipping the common extension headers."""
    first_word, payload_len, next_header, hop_limit, src, dst = _IP6.unpack_from(data, offset)
    if first_word >> 28 != 6:
        return None
    start = offset + 40
    # payload length 0: a jumbogram or an offloaded super-packet; the frame ends it.
    end = size if quoted or payload_len == 0 else min(start + payload_len, size)
    total = payload_len + 40
    ip_id = 0
    for _ in range(_MAX_IP6_EXT):
        if next_header in _IP6_EXT_OPTS:
            following = data[start]
            start += (data[start + 1] + 1) * 8
            next_header = following
        elif next_header == _IP6_AH:
            following = data[start]
            start += (data[start + 1] + 2) * 4
            next_header = following
        elif next_header == _IP6_FRAGMENT:
            following, offset_flags, ip_id = _IP6_FRAG.unpack_from(data, start)
            start += 8
            next_header = following
            if offset_flags >> 3:  # not the first fragment: no transport header
                digest = _FRAG_OFFSET.pack(offset_flags >> 3) + data[start : start + 14]
                return Headers(
                    6, _address(src), _address(dst), next_header, ip_id, hop_limit, total,
                    payload_digest=digest,
                )  # fmt: skip
        else:
            break
    if start > size:
        return None
    if next_header == _IP6_NO_NEXT:
        return Headers(6, _address(src), _address(dst), next_header, ip_id, hop_limit, total)
    return _transport(
        data, start, end, 6, _address(src), _address(dst), next_header, ip_id, hop_limit, total,
        quoted,
    )  # fmt: skip


def _transport(
    data: bytes,
    start: int,
    end: int,
    version: int,
    src: str,
    dst: str,
    proto: int,
    ip_id: int,
    ttl: int,
    length: int,
    quoted: bool,
) -> Headers | None:
    """Add the transport fields to the IP fields and build the Headers.

    `quoted` marks the packet inside an ICMP error: only 8 transport bytes are
    promised there, so a short header is kept rather than rejected.
    """
    sport = dport = icmp_type = icmp_code = icmp_id = icmp_seq = None
    tcp_seq = tcp_ack = tcp_flags = None
    inner = None
    body = start  # where the transport payload starts
    available = end - start
    if proto == _PROTO_TCP:
        if available >= 14:
            sport, dport, tcp_seq, tcp_ack, data_offset, tcp_flags = _TCP.unpack_from(data, start)
            if data_offset < 0x50 and not quoted:  # a TCP header is at least 5 words
                return None
            tcp_flags |= (data_offset & 1) << 8  # the NS bit
            body = start + (data_offset >> 4) * 4
        elif quoted and available >= 8:
            sport, dport, tcp_seq = _TCP_QUOTED.unpack_from(data, start)
            body = end
        elif quoted:
            body = end
        else:
            return None
    elif proto in _PORT_PROTOCOLS:
        if available >= 8:
            sport, dport = _PORTS.unpack_from(data, start)
            body = start + (12 if proto == _PROTO_SCTP else 8)
        elif quoted:
            body = end
        else:
            return None
    elif proto in _ICMP_PROTOCOLS:
        if available >= 8:
            icmp_type, icmp_code, ident, seq = _ICMP.unpack_from(data, start)
            body = start + 8
            if icmp_type in (_ICMP4_ECHO if proto == _PROTO_ICMP else _ICMP6_ECHO):
                icmp_id = ident
                icmp_seq = seq
            elif not quoted and icmp_type in (
                _ICMP4_ERRORS if proto == _PROTO_ICMP else _ICMP6_ERRORS
            ):
                # NAT rewrites the quoted packet along with the error, so the quote
                # stays out of the digest; its own NAT-proof fields identify it.
                inner = _quoted_packet(data, body, end)
                body = end
        elif quoted and available >= 2:
            icmp_type = data[start]
            icmp_code = data[start + 1]
            body = end
        elif quoted:
            body = end
        else:
            return None
    if dport == VXLAN_PORT and proto == _PROTO_UDP and not quoted:
        inside = _vxlan(data, body, end, version, src, dst, sport, dport, ttl, ip_id)
        if inside is not None:
            return inside
    digest = data[body : min(end, body + PAYLOAD_DIGEST_BYTES)]
    return _new_headers((
        version, src, dst, proto, ip_id, ttl, length,
        sport, dport, icmp_type, icmp_code, icmp_id, icmp_seq,
        tcp_seq, tcp_ack, tcp_flags, digest, inner, None,
    ))  # fmt: skip


def _vxlan(
    data: bytes,
    body: int,
    end: int,
    version: int,
    src: str,
    dst: str,
    sport: int | None,
    dport: int,
    ttl: int,
    ip_id: int,
) -> Headers | None:
    """The inner packet of a VXLAN datagram (RFC 7348: 8 bytes, the I flag, a 24-bit
    VNI, then an Ethernet frame), carrying the outer headers; None when it is not one."""
    if end - body < 8 + 14 or not data[body] & 0x08:
        return None
    try:
        inner = _decode(data[body + 8 : end], LINKTYPE_ETHERNET)
    except (IndexError, struct.error, ValueError):  # an inner frame cut short: plain UDP
        return None
    if inner is None or inner.outer is not None:
        return None
    vni = int.from_bytes(data[body + 4 : body + 7], "big")
    return inner._replace(outer=Tunnel("vxlan", src, dst, sport or 0, dport, vni, ttl, ip_id))


def _quoted_packet(data: bytes, start: int, end: int) -> Headers | None:
    """The packet an ICMP error quotes; None when the quote is too short to read."""
    if end - start < 20:
        return None
    version = data[start] >> 4
    try:
        if version == 4:
            return _ipv4(data, start, end, True)
        if version == 6:
            return _ipv6(data, start, end, True)
    except (IndexError, struct.error):
        return None
    return None


def arp_fields(frame: bytes) -> tuple[int, str, str] | None:
    """(operation, sender IP, target IP) of an Ethernet ARP frame for IPv4, else None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06" or frame[16:18] != b"\x08\x00":
        return None
    op = int.from_bytes(frame[20:22], "big")
    return op, socket.inet_ntoa(frame[28:32]), socket.inet_ntoa(frame[38:42])


#: ICMPv6 neighbour solicitation and advertisement (RFC 4861): IPv6's ARP.
NDP_SOLICITATION = 135
NDP_ADVERTISEMENT = 136


def ndp_fields(frame: bytes) -> tuple[int, str, str] | None:
    """(ICMPv6 type, IPv6 source, target address) of an Ethernet frame carrying an NDP
    neighbour solicitation or advertisement, else None.

    The target is the address being resolved (a solicitation) or announced (an
    advertisement).  Read at fixed offsets: NDP messages carry no extension headers
    (RFC 4861 requires a hop limit of 255 and no fragmentation).
    """
    if len(frame) < 78 or frame[12:14] != b"\x86\xdd" or frame[20] != _PROTO_ICMPV6:
        return None
    icmp_type = frame[54]
    if icmp_type not in (NDP_SOLICITATION, NDP_ADVERTISEMENT):
        return None
    return icmp_type, _address(frame[22:38]), _address(frame[62:78])


def is_ndp(h: Headers | None) -> bool:
    """An NDP neighbour solicitation or advertisement (link-local housekeeping, not a
    packet a trace follows)."""
    return (
        h is not None
        and h.proto == _PROTO_ICMPV6
        and h.icmp_type in (NDP_SOLICITATION, NDP_ADVERTISEMENT)
    )
