"""decode_frame on frames built with scapy (bytes only: scapy never decodes here).

Each test runs the pure-Python decoder and, when it is built, the C one beside it
(test_framedecode.py compares the two on generated frames).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether

from flowtrace.correlate import decode
from flowtrace.correlate.decode import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    PAYLOAD_DIGEST_BYTES,
    decode_frame_python,
)
from flowtrace.model import Headers


def decode_frame(data: bytes | memoryview, linktype: int = LINKTYPE_ETHERNET) -> Headers | None:
    """The Python decoder's answer, after checking the C one (when built) gives the same."""
    expected = decode_frame_python(data, linktype)
    if decode.decode_frame is not decode_frame_python:
        got = decode.decode_frame(data, linktype)
        assert got == expected and type(got) is type(expected)
    return expected


ETH = Ether(src="02:42:ac:11:00:02", dst="02:42:ac:11:00:03")
PAYLOAD = bytes(range(48))


def ping(seq: int = 1, ident: int = 7, ip_id: int = 100) -> bytes:
    return bytes(
        ETH
        / IP(src="172.17.0.2", dst="172.17.0.3", id=ip_id, ttl=64)
        / ICMP(id=ident, seq=seq)
        / PAYLOAD
    )


def test_icmp_echo_request_fields() -> None:
    h = decode_frame(ping(seq=3, ident=9, ip_id=4242))
    assert h == Headers(
        version=4,
        src="172.17.0.2",
        dst="172.17.0.3",
        proto=1,
        ip_id=4242,
        ttl=64,
        length=20 + 8 + len(PAYLOAD),
        icmp_type=8,
        icmp_code=0,
        icmp_id=9,
        icmp_seq=3,
        payload_digest=PAYLOAD[:PAYLOAD_DIGEST_BYTES],
    )


def test_headers_from_the_fast_constructor_behave_like_any_other() -> None:
    h = decode_frame(ping())
    assert h is not None
    assert type(h) is Headers
    same = Headers(**h._asdict())
    assert h == same and hash(h) == hash(same)
    assert h._replace(ttl=1).ttl == 1
    assert h.proto_name == "icmp" and h._replace(proto=99).proto_name == "99"
    with pytest.raises(AttributeError):
        h.ttl = 3  # type: ignore[misc]


def test_tcp_fields_flags_and_payload_digest() -> None:
    frame = bytes(
        ETH
        / IP(src="10.0.0.1", dst="10.0.0.2", id=5)
        / TCP(
            sport=40000,
            dport=80,
            seq=123456,
            ack=654321,
            flags="PA",
            options=[("MSS", 1460), ("NOP", None), ("WScale", 7)],
        )
        / b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    h = decode_frame(frame)
    assert h is not None
    assert (h.proto, h.sport, h.dport) == (6, 40000, 80)
    assert (h.tcp_seq, h.tcp_ack, h.tcp_flags) == (123456, 654321, 0x18)
    assert h.payload_digest == b"GET / HTTP/1.1\r\n"
    assert h.icmp_type is None and h.icmp_id is None


def test_ethernet_padding_is_not_payload() -> None:
    syn = bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="S"))
    padded = syn + b"\x00" * (60 - len(syn))
    h = decode_frame(padded)
    assert h is not None
    assert h.payload_digest == b""
    assert h.length == 40


def test_udp_fields() -> None:
    h = decode_frame(
        bytes(
            ETH / IP(src="10.0.0.1", dst="10.0.0.53") / UDP(sport=5353, dport=53) / b"\x12\x34query"
        )
    )
    assert h is not None
    assert (h.proto, h.sport, h.dport, h.payload_digest) == (17, 5353, 53, b"\x12\x34query")


def test_vlan_and_qinq_tags_are_skipped() -> None:
    inner = IP(src="10.1.0.2", dst="10.1.0.3", id=77) / UDP(sport=1, dport=2) / b"v"
    for frame in (ETH / Dot1Q(vlan=5) / inner, ETH / Dot1AD(vlan=10) / Dot1Q(vlan=20) / inner):
        h = decode_frame(bytes(frame))
        assert h is not None
        assert (h.src, h.ip_id, h.dport) == ("10.1.0.2", 77, 2)


def test_linux_cooked_captures() -> None:
    ip = IP(src="172.17.0.2", dst="203.0.113.2", id=9) / ICMP(id=1, seq=2)
    sll = bytes(
        CookedLinux(pkttype=4, lladdrtype=1, lladdrlen=6, src=b"\x02" * 6, proto=0x0800) / ip
    )
    sll2 = bytes(CookedLinuxV2(proto=0x0800, ifindex=3, lladdrtype=1, pkttype=4, lladdrlen=6) / ip)
    for frame, linktype in ((sll, LINKTYPE_LINUX_SLL), (sll2, LINKTYPE_LINUX_SLL2)):
        h = decode_frame(frame, linktype)
        assert h is not None
        assert (h.src, h.dst, h.icmp_seq) == ("172.17.0.2", "203.0.113.2", 2)


def test_raw_ip_and_loopback_link_types() -> None:
    v4 = bytes(IP(src="127.0.0.1", dst="127.0.0.1", id=3) / UDP(sport=1, dport=2))
    v6 = bytes(IPv6(src="::1", dst="::1") / UDP(sport=3, dport=4))
    assert decode_frame(v4, LINKTYPE_RAW).ip_id == 3  # type: ignore[union-attr]
    assert decode_frame(v6, LINKTYPE_RAW).dport == 4  # type: ignore[union-attr]
    assert decode_frame(v4, LINKTYPE_IPV4).src == "127.0.0.1"  # type: ignore[union-attr]
    assert decode_frame(v6, LINKTYPE_IPV6).src == "::1"  # type: ignore[union-attr]
    assert decode_frame(struct.pack("<I", 2) + v4, LINKTYPE_NULL).ip_id == 3  # type: ignore[union-attr]
    assert decode_frame(struct.pack("!I", 2) + v4, LINKTYPE_LOOP).ip_id == 3  # type: ignore[union-attr]
    assert decode_frame(struct.pack("<I", 30) + v6, LINKTYPE_NULL).dport == 4  # type: ignore[union-attr]
    assert decode_frame(struct.pack("<I", 7) + v4, LINKTYPE_NULL) is None
    assert decode_frame(v4, 147) is None  # a link type decode_frame does not know


def test_ipv4_options_are_skipped() -> None:
    frame = bytes(
        ETH
        / IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_RR()])
        / UDP(sport=7, dport=8)
        / b"opt"
    )
    h = decode_frame(frame)
    assert h is not None
    assert (h.sport, h.dport, h.payload_digest) == (7, 8, b"opt")


def test_ipv4_fragments_only_the_first_has_ports() -> None:
    datagram = (
        IP(src="10.0.0.1", dst="10.0.0.2", id=999) / UDP(sport=1000, dport=2000) / (b"\x00" * 3000)
    )
    pieces = [decode_frame(bytes(ETH / f)) for f in fragment(datagram, fragsize=1000)]
    assert len(pieces) == 4
    assert all(p is not None and p.ip_id == 999 for p in pieces)
    assert pieces[0] is not None and (pieces[0].sport, pieces[0].dport) == (1000, 2000)
    for p in pieces[1:]:
        assert p is not None and p.sport is None and p.dport is None
    # Zero-filled fragments differ only by offset: the digest must still tell them apart.
    assert len({p.payload_digest for p in pieces if p is not None}) == 4


def test_ipv6_extension_headers_are_skipped() -> None:
    frame = bytes(
        ETH
        / IPv6(src="fd00::2", dst="fd00::3")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting()
        / UDP(sport=11, dport=12)
        / b"six"
    )
    h = decode_frame(frame)
    assert h is not None
    assert (h.version, h.proto, h.sport, h.dport, h.payload_digest) == (6, 17, 11, 12, b"six")


def test_ipv6_fragments() -> None:
    header = IPv6(src="fd00::2", dst="fd00::3")
    first = header / IPv6ExtHdrFragment(id=0xABCDEF, m=1) / UDP(sport=5, dport=6) / (b"a" * 8)
    later = header / IPv6ExtHdrFragment(id=0xABCDEF, nh=17, offset=2) / (b"b" * 16)
    h1, h2 = decode_frame(bytes(ETH / first)), decode_frame(bytes(ETH / later))
    assert h1 is not None and h2 is not None
    assert (h1.ip_id, h1.sport, h1.dport) == (0xABCDEF, 5, 6)
    assert (h2.ip_id, h2.proto, h2.sport) == (0xABCDEF, 17, None)


def test_icmp_error_quotes_the_packet_it_answers() -> None:
    original = IP(src="172.17.0.2", dst="203.0.113.2", id=321, ttl=1) / UDP(
        sport=33434, dport=33435
    )
    error = (
        ETH
        / IP(src="198.51.100.1", dst="172.17.0.2", id=55)
        / ICMP(type=11, code=0)
        / bytes(original)
    )
    h = decode_frame(bytes(error))
    assert h is not None
    assert (h.icmp_type, h.icmp_code, h.icmp_id, h.payload_digest) == (11, 0, None, b"")
    assert h.inner is not None
    assert (h.inner.src, h.inner.dst, h.inner.ip_id) == ("172.17.0.2", "203.0.113.2", 321)
    assert (h.inner.sport, h.inner.dport) == (33434, 33435)


def test_icmp_error_quoting_an_echo_request_keeps_its_id_and_seq() -> None:
    quoted = bytes(IP(src="172.17.0.2", dst="203.0.113.2", id=8) / ICMP(id=77, seq=5))[:28]
    error = ETH / IP(src="203.0.113.1", dst="172.17.0.2") / ICMP(type=3, code=1) / quoted
    h = decode_frame(bytes(error))
    assert h is not None and h.inner is not None
    assert (h.inner.icmp_type, h.inner.icmp_id, h.inner.icmp_seq) == (8, 77, 5)


def test_icmp_error_with_only_eight_quoted_tcp_bytes() -> None:
    quoted = bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=1) / TCP(sport=1234, dport=80, seq=99))[
        :28
    ]
    h = decode_frame(
        bytes(ETH / IP(src="10.0.0.9", dst="10.0.0.1") / ICMP(type=3, code=3) / quoted)
    )
    assert h is not None and h.inner is not None
    assert (h.inner.sport, h.inner.dport, h.inner.tcp_seq, h.inner.tcp_flags) == (
        1234,
        80,
        99,
        None,
    )


def test_icmpv6_echo_and_error() -> None:
    request = decode_frame(
        bytes(ETH / IPv6(src="fd00::2", dst="fd00::3") / ICMPv6EchoRequest(id=3, seq=4, data=b"hi"))
    )
    reply = decode_frame(
        bytes(ETH / IPv6(src="fd00::3", dst="fd00::2") / ICMPv6EchoReply(id=3, seq=4, data=b"hi"))
    )
    assert request is not None and reply is not None
    assert (request.proto, request.icmp_type, request.icmp_id, request.icmp_seq) == (58, 128, 3, 4)
    assert (reply.icmp_type, reply.payload_digest) == (129, b"hi")
    original = IPv6(src="fd00::2", dst="fd00::9") / UDP(sport=9, dport=10)
    error = decode_frame(
        bytes(
            ETH / IPv6(src="fd00::1", dst="fd00::2") / ICMPv6DestUnreach(code=3) / bytes(original)
        )
    )
    assert error is not None and error.inner is not None
    assert (error.icmp_type, error.inner.dst, error.inner.dport) == (1, "fd00::9", 10)


def test_offloaded_super_packet_with_zero_total_length() -> None:
    frame = bytearray(bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(seq=1) / (b"x" * 3000)))
    frame[16:18] = b"\x00\x00"  # the kernel hands GSO packets up with tot_len 0 at times
    h = decode_frame(bytes(frame))
    assert h is not None
    assert (h.tcp_seq, h.payload_digest) == (1, b"x" * PAYLOAD_DIGEST_BYTES)


def test_non_ip_frames_are_none() -> None:
    assert decode_frame(bytes(ETH / ARP(psrc="172.17.0.2", pdst="172.17.0.3"))) is None
    lldp = bytes(Ether(dst="01:80:c2:00:00:0e", type=0x88CC)) + b"\x02\x07\x04" + b"\x00" * 40
    assert decode_frame(lldp) is None


def test_memoryview_input_decodes_like_bytes() -> None:
    frame = ping()
    assert decode_frame(memoryview(frame)) == decode_frame(frame)
    assert decode_frame(memoryview(bytearray(frame))[:]) == decode_frame(frame)


def test_every_truncation_of_a_frame_is_none_or_headers() -> None:
    frames = [
        ping(),
        bytes(ETH / IP() / TCP(options=[("MSS", 1460)]) / b"data"),
        bytes(ETH / IPv6() / IPv6ExtHdrHopByHop() / UDP() / b"d"),
        bytes(ETH / IP() / ICMP(type=3) / bytes(IP() / UDP())),
    ]
    for frame in frames:
        for cut in range(len(frame)):
            h = decode_frame(frame[:cut])
            assert h is None or isinstance(h, Headers)
        # Cut inside the IP header or the first 8 transport bytes: nothing usable.
        assert decode_frame(frame[: 14 + 19]) is None
        assert decode_frame(frame[:14]) is None


def test_garbage_in_the_headers_is_none() -> None:
    frame = bytearray(ping())
    frame[14] = 0x45 & 0x0F | 0x70  # IP version 7
    assert decode_frame(bytes(frame)) is None
    frame = bytearray(ping())
    frame[14] = 0x42  # IHL 2: shorter than the fixed header
    assert decode_frame(bytes(frame)) is None
    frame = bytearray(ping())
    frame[16:18] = b"\x00\x05"  # total length shorter than the header
    assert decode_frame(bytes(frame)) is None
    tcp = bytearray(bytes(ETH / IP() / TCP()))
    tcp[14 + 20 + 12] = 0x20  # data offset 2 words
    assert decode_frame(bytes(tcp)) is None


LINKTYPES = st.sampled_from(
    [
        LINKTYPE_ETHERNET,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_LINUX_SLL2,
        LINKTYPE_RAW,
        LINKTYPE_NULL,
        LINKTYPE_LOOP,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        42,
    ]
)


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=200), linktype=LINKTYPES)
def test_random_bytes_never_raise(data: bytes, linktype: int) -> None:
    h = decode_frame(data, linktype)
    assert h is None or isinstance(h, Headers)


SEEDS = [
    ping(),
    bytes(ETH / Dot1Q() / IP() / TCP() / b"abc"),
    bytes(ETH / IPv6() / IPv6ExtHdrFragment(m=1) / ICMPv6EchoRequest()),
    bytes(ETH / IP() / ICMP(type=11) / bytes(IP() / ICMP())),
]


@settings(max_examples=400, deadline=None)
@given(
    seed=st.sampled_from(SEEDS),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 200),
)
def test_corrupted_real_frames_never_raise(
    seed: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    frame = bytearray(seed)
    for position, value in flips:
        if position < len(frame):
            frame[position] = value
    h = decode_frame(bytes(frame[: max(cut, 14)]))
    assert h is None or isinstance(h, Headers)


def test_a_vxlan_datagram_is_its_inner_packet_with_the_outer_headers_beside() -> None:
    from scapy.layers.vxlan import VXLAN

    inner = IP(src="10.213.129.2", dst="10.213.129.4", id=77) / ICMP(id=5, seq=1) / (b"x" * 32)
    frame = bytes(
        Ether()
        / IP(src="198.18.20.2", dst="198.18.20.3", id=9, ttl=63)
        / UDP(sport=55437, dport=4789)
        / VXLAN(vni=4097)
        / Ether()
        / inner
    )
    h = decode_frame(frame)
    assert h is not None
    assert h == decode_frame(bytes(Ether() / inner))._replace(outer=h.outer)  # type: ignore[union-attr]
    assert h.outer is not None
    assert (h.src, h.dst, h.ip_id, h.icmp_seq) == ("10.213.129.2", "10.213.129.4", 77, 1)
    assert h.outer[1:] == ("198.18.20.2", "198.18.20.3", 55437, 4789, 4097, 63, 9)
    assert h.outer.label == "VXLAN vni 4097 198.18.20.2:55437 -> 198.18.20.3:4789"


def test_udp_on_vxlans_port_that_is_not_vxlan_stays_udp() -> None:
    frame = bytes(
        Ether()
        / IP(src="198.18.20.2", dst="198.18.20.3")
        / UDP(sport=1, dport=4789)
        / (b"\x00" * 30)
    )
    h = decode_frame(frame)
    assert h is not None and h.proto == 17 and h.dport == 4789 and h.outer is None


def test_a_vxlan_datagram_whose_inner_packet_is_cut_short_stays_udp() -> None:
    """The inner Ethernet header is whole but its IP header is not (a small snaplen):
    the datagram is still the outer UDP one, not nothing."""
    from scapy.layers.vxlan import VXLAN

    frame = bytes(
        Ether()
        / IP(src="198.18.20.2", dst="198.18.20.3")
        / UDP(sport=55437, dport=4789)
        / VXLAN(vni=4097)
        / Ether()
        / IP(src="10.213.129.2", dst="10.213.129.4")
    )
    h = decode_frame(frame[: 14 + 20 + 8 + 8 + 14 + 6])
    assert h is not None and h.proto == 17 and h.dport == 4789 and h.outer is None


def test_ndp_solicitation_and_advertisement() -> None:
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr

    from flowtrace.correlate.decode import is_ndp, ndp_fields

    target = "fd6c:6162:3600::3"
    solicitation = bytes(
        ETH
        / IPv6(src="fd6c:6162:3600::2", dst="ff02::1:ff00:3", hlim=255)
        / ICMPv6ND_NS(tgt=target)
        / ICMPv6NDOptSrcLLAddr(lladdr="02:42:ac:12:00:02")
    )
    advertisement = bytes(
        ETH / IPv6(src=target, dst="fd6c:6162:3600::2", hlim=255) / ICMPv6ND_NA(tgt=target)
    )
    assert ndp_fields(solicitation) == (135, "fd6c:6162:3600::2", target)
    assert ndp_fields(advertisement) == (136, target, target)
    assert is_ndp(decode_frame(solicitation)) and is_ndp(decode_frame(advertisement))
    echo = bytes(ETH / IPv6(src="fd00::2", dst="fd00::3") / ICMPv6EchoRequest())
    assert ndp_fields(echo) is None and not is_ndp(decode_frame(echo))
    assert ndp_fields(bytes(ETH / ARP(pdst="10.0.0.1"))) is None
    assert ndp_fields(solicitation[:70]) is None  # cut short


def test_icmpv6_error_quotes_enough_of_a_probe_to_find_its_mark() -> None:
    probe = (
        IPv6(src="fd6c:6162:3600::2", dst="2001:db8:f6::2")
        / UDP(sport=40000, dport=9)
        / (b"\x12\x34\x56\x78flowtrace\x00\x01" + bytes(17))
    )
    error = decode_frame(
        bytes(
            ETH
            / IPv6(src="2001:db8:f6::2", dst="fd6c:6162:3600::2")
            / ICMPv6DestUnreach(code=4)
            / bytes(probe)
        )
    )
    assert error is not None and error.inner is not None
    assert (error.icmp_type, error.icmp_code) == (1, 4)
    assert error.inner.payload_digest == b"\x12\x34\x56\x78flowtrace\x00\x01\x00"
    assert error.payload_digest == b""  # the quote stays out of the error's own digest
