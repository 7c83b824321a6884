"""The C frame decoder (_framedecode.c) against decode.py's Python one: the same Headers.

Frames are generated field by field (every link type, VLAN tags, IPv4 options and
fragments, IPv6 extension header chains, TCP/UDP/SCTP/ICMP, ICMP errors quoting a packet,
VXLAN), then mutated and cut; both decoders must give equal results of the same types,
down to each field.  The recorded captures in captures/examples/ and tests/data/fuzz/
are decoded frame by frame the same way.
"""

from __future__ import annotations

import gc
import importlib
import io
import os
import socket
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP
from scapy.layers.vxlan import VXLAN

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
    decode_frame_python,
)
from flowtrace.errors import FlowtraceError
from flowtrace.model import Headers
from flowtrace.pcap import open_capture

REPO = Path(__file__).resolve().parents[3]


def _load() -> ModuleType | None:
    try:
        module = importlib.import_module("flowtrace.correlate._framedecode")
    except ImportError:
        return None
    module.init(Headers, decode_frame_python)  # what decode.py does (it may not: NATIVE=0)
    return module


c = _load()
pytestmark = pytest.mark.skipif(
    c is None,
    reason="flowtrace/correlate/_framedecode.c is not built (no C compiler or Python headers)",
)

LINKTYPES = (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    LINKTYPE_NULL,
    LINKTYPE_LOOP,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
)


def same(got: object, expected: object) -> None:
    """Equal, and of the same type field by field (the nested Headers and Tunnel too)."""
    assert type(got) is type(expected), (got, expected)
    assert got == expected
    if isinstance(expected, tuple):
        assert isinstance(got, tuple)
        for g, e in zip(got, expected, strict=True):
            same(g, e)


def check(data: bytes, linktype: int) -> Headers | None:
    """Both decoders on one frame; the Python one's answer."""
    assert c is not None
    expected = decode_frame_python(data, linktype)
    same(c.decode_frame(data, linktype), expected)
    raw = c.decode(data, linktype)
    if raw is NotImplemented:
        # (Python's None: a VXLAN port datagram whose inner frame is cut short)
        assert expected is None or left_to_python(expected), expected
    else:
        assert not left_to_python(expected)
        same(raw, expected)
    return expected


def left_to_python(h: Headers | None) -> bool:
    """What C hands back: ICMP errors and UDP to VXLAN's port (VXLAN or not)."""
    return h is not None and (
        (h.proto == 1 and h.icmp_type in (3, 4, 5, 11, 12))
        or (h.proto == 58 and h.icmp_type in (1, 2, 3, 4))
        or (h.proto == 17 and h.dport == 4789)
        or h.outer is not None
    )


# --- frames, field by field ----------------------------------------------------------------

ADDRESSES4 = st.one_of(
    st.sampled_from([bytes([172, 17, 0, 2]), bytes([10, 0, 0, 1]), bytes(4), b"\xff" * 4]),
    st.binary(min_size=4, max_size=4),
)
ADDRESSES6 = st.one_of(
    st.sampled_from(
        [
            bytes(15) + b"\x01",
            bytes(16),
            b"\xfd\x00" + bytes(13) + b"\x02",
            bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1]),  # IPv4-mapped
            b"\xfe\x80" + bytes(6) + b"\x00\x42\xac\xff\xfe\x11\x00\x02",
        ]
    ),
    st.binary(min_size=16, max_size=16),
)
PAYLOADS = st.binary(max_size=40)


def mostly(
    right: st.SearchStrategy[int], wrong: st.SearchStrategy[int], odds: int = 6
) -> st.SearchStrategy[int]:
    """`right` but once in `odds` draws: most frames get far enough to have headers."""
    return st.integers(0, odds - 1).flatmap(lambda i: wrong if i == odds - 1 else right)


BYTE = st.integers(0, 255)
SHORT = st.integers(0, 0xFFFF)
PROTOS = mostly(st.sampled_from([1, 6, 17, 58, 132, 136, 59]), BYTE, odds=4)
ICMP4_TYPES = st.one_of(st.sampled_from([0, 8, 13, 14, 15, 16, 17, 18, 3, 4, 5, 11, 12]), BYTE)
ICMP6_TYPES = st.one_of(st.sampled_from([128, 129, 1, 2, 3, 4, 135, 136]), BYTE)


@st.composite
def transport(draw: st.DrawFn, proto: int, depth: int) -> bytes:
    if proto == 6:
        data_offset = draw(mostly(st.integers(5, 15), st.integers(0, 15)))
        head = struct.pack(
            "!HHIIBBHHH",
            draw(SHORT),
            draw(SHORT),
            draw(st.integers(0, 2**32 - 1)),
            draw(st.integers(0, 2**32 - 1)),
            data_offset << 4 | draw(st.integers(0, 15)),
            draw(BYTE),
            draw(SHORT),
            0,
            0,
        )
        return (
            head
            + draw(st.binary(min_size=max(0, data_offset * 4 - 20), max_size=40))
            + draw(PAYLOADS)
        )
    if proto in (17, 136, 132):
        dport = draw(st.one_of(st.sampled_from([4789, 53]), SHORT, SHORT))
        head = struct.pack("!HHHH", draw(SHORT), dport, draw(SHORT), 0)
        if proto == 132:
            head += draw(st.binary(min_size=4, max_size=4))
        if dport == 4789 and depth == 0 and draw(st.booleans()):
            flags = draw(st.sampled_from([0x08, 0x0C, 0x00, 0xFF]))
            vxlan = bytes([flags, 0, 0, 0]) + draw(st.binary(min_size=3, max_size=3)) + b"\x00"
            return head + vxlan + draw(link_ethernet(depth + 1))
        return head + draw(PAYLOADS)
    if proto in (1, 58):
        kind = draw(ICMP4_TYPES if proto == 1 else ICMP6_TYPES)
        head = struct.pack("!BBHHH", kind, draw(BYTE), 0, draw(SHORT), draw(SHORT))
        if depth == 0 and draw(st.booleans()):
            quoted = draw(st.one_of(ipv4(depth + 1), ipv6(depth + 1)))
            return head + quoted[: draw(mostly(st.just(len(quoted)), st.integers(0, len(quoted))))]
        return head + draw(PAYLOADS)
    return draw(PAYLOADS)


@st.composite
def ipv4(draw: st.DrawFn, depth: int = 0) -> bytes:
    ihl = draw(mostly(st.sampled_from([5, 5, 6, 15]), st.integers(0, 15)))
    proto = draw(PROTOS)
    options = draw(st.binary(min_size=max(0, ihl - 5) * 4, max_size=max(0, ihl - 5) * 4))
    body = draw(transport(proto, depth))
    right = max(ihl, 5) * 4 + len(body)
    total = draw(mostly(st.just(right), st.one_of(st.just(0), SHORT), odds=4))
    fragment_offset = draw(mostly(st.just(0), st.integers(0, 0x1FFF), odds=4))
    flags = draw(st.integers(0, 7)) << 13
    version = draw(mostly(st.just(4), st.integers(0, 15), odds=10))
    header = struct.pack(
        "!BBHHHBBH4s4s",
        version << 4 | ihl,
        draw(BYTE),
        total & 0xFFFF,
        draw(SHORT),
        flags | fragment_offset,
        draw(BYTE),
        proto,
        0,
        draw(ADDRESSES4),
        draw(ADDRESSES4),
    )
    return header + options + body


EXT_HEADERS = st.sampled_from([0, 43, 60, 135, 139, 140, 51, 44])


@st.composite
def ipv6(draw: st.DrawFn, depth: int = 0) -> bytes:
    chain = draw(st.one_of(st.lists(EXT_HEADERS, max_size=3), st.lists(EXT_HEADERS, max_size=10)))
    proto = draw(PROTOS)
    extensions = b""
    for i, ext in enumerate(chain):
        following = chain[i + 1] if i + 1 < len(chain) else proto
        if draw(st.integers(0, 9)) == 0:
            following = draw(BYTE)
        if ext == 44:
            offset = draw(mostly(st.just(0), st.integers(0, 0x1FFF), odds=3))
            extensions += struct.pack(
                "!BBHI",
                following,
                0,
                offset << 3 | draw(st.integers(0, 7)),
                draw(st.integers(0, 2**32 - 1)),
            )
        elif ext == 51:
            units = draw(st.integers(0, 4))
            extensions += bytes([following, units]) + draw(
                st.binary(min_size=(units + 2) * 4 - 2, max_size=(units + 2) * 4 - 2)
            )
        else:
            units = draw(st.integers(0, 3))
            extensions += bytes([following, units]) + draw(
                st.binary(min_size=(units + 1) * 8 - 2, max_size=(units + 1) * 8 - 2)
            )
    body = extensions + draw(transport(proto, depth))
    payload_len = draw(mostly(st.just(len(body)), st.one_of(st.just(0), SHORT), odds=4))
    first = chain[0] if chain else proto
    version = draw(mostly(st.just(6), st.integers(0, 15), odds=10))
    header = struct.pack(
        "!IHBB16s16s",
        version << 28 | draw(st.integers(0, (1 << 28) - 1)),
        payload_len & 0xFFFF,
        first,
        draw(BYTE),
        draw(ADDRESSES6),
        draw(ADDRESSES6),
    )
    return header + body


VLAN_TPIDS = st.sampled_from([0x8100, 0x88A8, 0x9100])
ETHERTYPES = st.one_of(st.sampled_from([0x0800, 0x86DD, 0x0806]), SHORT)


def _ethertype_for(packet: bytes) -> int:
    return 0x86DD if packet and packet[0] >> 4 == 6 else 0x0800


@st.composite
def link_ethernet(draw: st.DrawFn, depth: int = 0) -> bytes:
    packet = draw(st.one_of(ipv4(depth), ipv6(depth)))
    ethertype = draw(mostly(st.just(_ethertype_for(packet)), ETHERTYPES))
    tags = draw(st.lists(VLAN_TPIDS, max_size=5))
    out = draw(st.binary(min_size=12, max_size=12))
    for tpid in tags:
        out += struct.pack("!HH", tpid, draw(SHORT))
    return out + struct.pack("!H", ethertype) + packet


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, int]:
    """(frame, link type), of every link type decode.py knows and one it does not."""
    linktype = draw(st.sampled_from([*LINKTYPES, 42]))
    if linktype == LINKTYPE_ETHERNET:
        return draw(link_ethernet()), linktype
    packet = draw(st.one_of(ipv4(), ipv6()))
    ethertype = draw(mostly(st.just(_ethertype_for(packet)), ETHERTYPES))
    if linktype == LINKTYPE_LINUX_SLL:
        head = draw(st.binary(min_size=14, max_size=14)) + struct.pack("!H", ethertype)
        if draw(st.booleans()):
            head = head[:14] + struct.pack("!HHH", 0x8100, draw(SHORT), ethertype)
    elif linktype == LINKTYPE_LINUX_SLL2:
        head = struct.pack("!H", ethertype) + draw(st.binary(min_size=18, max_size=18))
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        family = draw(
            mostly(
                st.just(2 if packet and packet[0] >> 4 != 6 else 30),
                st.one_of(st.sampled_from([2, 10, 24, 28, 30, 7]), st.integers(0, 2**32 - 1)),
            )
        )
        head = struct.pack(draw(st.sampled_from(["<I", "!I"])), family)
    else:
        head = b""
    return head + packet, linktype


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=frames())
def test_generated_frames_decode_the_same(frame: tuple[bytes, int]) -> None:
    check(*frame)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frame=frames(),
    flips=st.lists(st.tuples(st.integers(0, 300), BYTE), max_size=6),
    cut=st.integers(0, 400),
)
def test_mutated_and_cut_frames_decode_the_same(
    frame: tuple[bytes, int], flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(frame[0])
    for position, value in flips:
        if position < len(data):
            data[position] = value
    check(bytes(data[:cut]), frame[1])


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=120), linktype=st.sampled_from([*LINKTYPES, 42, -1, 2**70]))
def test_random_bytes_decode_the_same(data: bytes, linktype: int) -> None:
    check(data, linktype)


# --- frames scapy builds, cut at every length --------------------------------------------

ETH = Ether(src="02:42:ac:11:00:02", dst="02:42:ac:11:00:03")
V4 = IP(src="172.17.0.2", dst="172.17.0.3", id=4242, ttl=64)
V6 = IPv6(src="fd00::2", dst="fd00::3", hlim=64)


def scapy_packets() -> list[bytes]:
    """IP packets (no link header) of each kind decode.py tells apart."""
    big = V4 / UDP(sport=1000, dport=2000) / bytes(range(256)) * 4
    return [
        bytes(V4 / ICMP(id=9, seq=3) / bytes(range(48))),
        bytes(V4 / TCP(sport=40000, dport=80, seq=1, ack=2, flags="PA") / b"GET / HTTP/1.1\r\n"),
        bytes(V4 / TCP(flags="S", options=[("MSS", 1460), ("WScale", 7)])),
        bytes(V4 / TCP(flags=0x1FF)),  # every flag, the NS bit too
        bytes(V4 / UDP(sport=5353, dport=53) / b"\x12\x34query"),
        bytes(IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_RR()]) / UDP() / b"opt"),
        bytes(V4 / SCTP(sport=1, dport=2) / b"chunk-data-here"),
        *(bytes(f) for f in fragment(big, fragsize=400)),
        bytes(
            V4 / ICMP(type=11) / bytes(IP(src="10.9.9.9", dst="8.8.8.8") / UDP(sport=7, dport=9))
        ),
        bytes(V4 / ICMP(type=3, code=3) / bytes(IP() / TCP(sport=1234, dport=80, seq=99))[:28]),
        bytes(V6 / ICMPv6EchoRequest(id=3, seq=4, data=b"hi")),
        bytes(V6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting() / UDP() / b"6"),
        bytes(V6 / IPv6ExtHdrFragment(id=0xABCDEF, m=1) / UDP(sport=5, dport=6) / (b"a" * 8)),
        bytes(V6 / IPv6ExtHdrFragment(id=0xABCDEF, nh=17, offset=2) / (b"b" * 16)),
        bytes(V6 / ICMPv6DestUnreach(code=4) / bytes(IPv6(dst="2001:db8::9") / UDP(dport=9))),
        bytes(V6 / TCP(sport=2, dport=3, flags="SA") / b"six"),
        bytes(V6 / IPv6ExtHdrDestOpt(nh=59)),
        bytes(
            IP(src="198.18.20.2", dst="198.18.20.3", id=9, ttl=63)
            / UDP(sport=55437, dport=4789)
            / VXLAN(vni=4097)
            / Ether()
            / IP(src="10.213.129.2", dst="10.213.129.4", id=77)
            / ICMP(id=5, seq=1)
            / (b"x" * 32)
        ),
        bytes(V4 / UDP(sport=1, dport=4789) / bytes(30)),
    ]


def linked(packet: bytes) -> list[tuple[bytes, int]]:
    """The packet under each link type's header."""
    ethertype = struct.pack("!H", _ethertype_for(packet))
    family = 30 if packet[0] >> 4 == 6 else 2
    return [
        (bytes(ETH)[:12] + ethertype + packet, LINKTYPE_ETHERNET),
        (
            bytes(ETH / Dot1AD(vlan=10) / Dot1Q(vlan=20))[:20] + ethertype + packet,
            LINKTYPE_ETHERNET,
        ),
        (bytes(14) + ethertype + packet, LINKTYPE_LINUX_SLL),
        (ethertype + bytes(18) + packet, LINKTYPE_LINUX_SLL2),
        (struct.pack("<I", family) + packet, LINKTYPE_NULL),
        (struct.pack("!I", family) + packet, LINKTYPE_LOOP),
        (packet, LINKTYPE_RAW),
        (packet, LINKTYPE_IPV4),
        (packet, LINKTYPE_IPV6),
    ]


def test_scapy_frames_cut_at_every_length_decode_the_same() -> None:
    decoded = 0
    for packet in scapy_packets():
        for frame, linktype in linked(packet):
            assert check(frame, linktype) is not None
            decoded += 1
            for cut in range(len(frame)):
                check(frame[:cut], linktype)
    assert decoded == 9 * len(scapy_packets())


def test_the_common_frames_are_decoded_in_c() -> None:
    assert c is not None
    for packet in scapy_packets()[:8]:  # echo, TCP, UDP, options, SCTP, a fragment
        for frame, linktype in linked(packet):
            h = c.decode(frame, linktype)
            assert isinstance(h, Headers), (packet, linktype)


def test_icmp_errors_and_vxlan_are_left_to_python() -> None:
    assert c is not None
    packets = scapy_packets()
    quoting = [p for p in packets if p[9] == 1 and p[20] == 11]
    assert len(quoting) == 1
    error, vxlan, not_vxlan = (
        bytes(ETH)[:12] + b"\x08\x00" + p for p in (quoting[0], packets[-2], packets[-1])
    )
    for frame in (error, vxlan, not_vxlan):
        assert c.decode(frame, LINKTYPE_ETHERNET) is NotImplemented
        same(c.decode_frame(frame), decode_frame_python(frame))
    h = c.decode_frame(vxlan)
    assert h is not None and h.outer is not None and h.outer.vni == 4097
    e = c.decode_frame(error)
    assert e is not None and e.inner is not None and e.inner.dport == 9


def test_headers_from_c_are_headers() -> None:
    assert c is not None
    frame = bytes(ETH / V4 / ICMP(id=9, seq=3) / bytes(range(48)))
    h = c.decode_frame(frame)
    assert type(h) is Headers
    assert h._fields == Headers._fields
    assert h == Headers(**h._asdict()) and hash(h) == hash(Headers(**h._asdict()))
    assert h._replace(ttl=1).ttl == 1 and h.proto_name == "icmp"
    assert (h.src, h.dst, h.icmp_id, h.icmp_seq, h.length) == ("172.17.0.2", "172.17.0.3", 9, 3, 76)
    with pytest.raises(AttributeError):
        h.ttl = 3


def test_arguments_decode_frame_takes() -> None:
    assert c is not None
    frame = bytes(ETH / V4 / UDP(sport=1, dport=2))
    expected = decode_frame_python(frame)
    same(c.decode_frame(frame), expected)  # linktype defaults to Ethernet
    same(c.decode_frame(frame, linktype=LINKTYPE_ETHERNET), expected)
    same(c.decode_frame(data=frame), expected)
    same(c.decode_frame(memoryview(frame)), expected)
    same(c.decode_frame(bytearray(frame)), expected)
    same(c.decode_frame(memoryview(bytearray(frame))[:]), expected)
    same(c.decode_frame(frame, True), decode_frame_python(frame, True))
    assert c.decode_frame(frame[14:], 2**80) is None
    with pytest.raises(TypeError):
        c.decode_frame()
    with pytest.raises(TypeError):
        c.decode_frame(frame, 1, 2)
    with pytest.raises(TypeError):
        c.decode(frame)
    with pytest.raises(TypeError):
        c.decode("text", 1)


def test_many_addresses_through_the_bounded_cache() -> None:
    """More addresses than the cache holds, and colliding ones: each still its own text."""
    assert c is not None
    four = bytes(ETH / V4 / UDP())
    for n in range(0, 200_000, 3):
        src = struct.pack("!I", 0x0A000000 + n)
        h = c.decode_frame(four[:26] + src + four[30:])
        assert h is not None and h.src == socket.inet_ntop(socket.AF_INET, src)
        assert h.dst == "172.17.0.3"
    six = bytes(ETH / V6 / UDP())
    for n in range(0, 140_000, 7):
        src = struct.pack("!QQ", 0xFD00 << 48, n * 0x10001)
        h = c.decode_frame(six[:22] + src + six[38:])
        assert h is not None and h.src == socket.inet_ntop(socket.AF_INET6, src)
        assert h.dst == "fd00::3"


def test_decoding_again_and_again_keeps_no_memory() -> None:
    assert c is not None
    frames = [f for p in scapy_packets() for f in linked(p)]
    frames += [(f[:cut], t) for f, t in frames[::5] for cut in (10, 30, 50)]

    def run() -> None:
        for _ in range(300):
            for frame, linktype in frames:
                c.decode_frame(frame, linktype)
                c.decode(frame, linktype)

    run()  # fills the address caches
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes kept after {300 * len(frames)} decodes"


# --- recorded captures ---------------------------------------------------------------------


def capture_frames(capture: bytes) -> list[tuple[bytes, int]]:
    """Every frame a capture file yields (up to where it breaks), with its link type."""
    out: list[tuple[bytes, int]] = []
    try:
        with open_capture(io.BytesIO(capture)) as reader:
            for record in reader:
                out.append((record.data, reader.interfaces[record.interface].linktype))
    except FlowtraceError:
        pass
    return out


def test_the_example_captures_decode_the_same() -> None:
    files = sorted((REPO / "captures" / "examples").glob("*/*.pcapng"))
    assert files
    decoded = 0
    for path in files:
        found = capture_frames(path.read_bytes())
        assert found, path
        for frame, linktype in found:
            decoded += check(frame, linktype) is not None
    assert decoded > 0


def test_the_fuzz_regressions_decode_the_same() -> None:
    """Each input of tests/data/fuzz/ (see tests/fuzz/fuzz_target.py: byte 0 odd means a
    manifest comes first) read as a capture, and every frame of it decoded by both."""
    files = sorted((REPO / "tests" / "data" / "fuzz").iterdir())
    assert files
    frames_seen = 0
    for path in files:
        data = path.read_bytes()
        if data and data[0] % 2:
            (length,) = struct.unpack_from("<I", data, 1)
            capture = data[5 + min(length, len(data) - 5) :]
        else:
            capture = data[1:]
        for frame, linktype in capture_frames(capture):
            check(frame, linktype)
            frames_seen += 1
    assert frames_seen > 0


# --- which decoder decode.py chooses --------------------------------------------------------


@pytest.mark.parametrize(("setting", "in_c"), [("0", False), ("1", True)])
def test_flowtrace_native_chooses_the_decoder(setting: str, in_c: bool) -> None:
    probe = (
        "from flowtrace.correlate import decode; "
        "print(decode.decode_frame is decode.decode_frame_python, decode._framedecode is None)"
    )
    env = {**os.environ, "FLOWTRACE_NATIVE": setting}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(not in_c)] * 2


def test_this_process_uses_the_c_decoder_unless_turned_off() -> None:
    if os.environ.get("FLOWTRACE_NATIVE") == "0":
        assert decode.decode_frame is decode_frame_python
    else:
        assert c is not None and decode.decode_frame is c.decode_frame
