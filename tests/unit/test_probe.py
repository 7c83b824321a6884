"""Probes built by hand must be what scapy (and so the kernel) reads them as."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from flowtrace.probe import ProbePlan


def _reparsed(raw: bytes) -> IP:
    pkt = IP(raw)
    # scapy recomputes checksums when the fields are deleted: compare with what we sent
    return pkt


@pytest.mark.parametrize("kind", ["icmp", "udp", "tcp"])
def test_checksums_match_scapy(kind: str) -> None:
    plan = ProbePlan.new(kind, "172.17.0.2", "203.0.113.2", None if kind == "icmp" else 8080)
    raw = plan.build(3)
    pkt = _reparsed(raw)
    fresh = IP(raw)
    del fresh.chksum
    layer = {"icmp": ICMP, "udp": UDP, "tcp": TCP}[kind]
    del fresh[layer].chksum
    rebuilt = IP(bytes(fresh))
    assert pkt.chksum == rebuilt.chksum
    assert pkt[layer].chksum == rebuilt[layer].chksum
    assert pkt.src == "172.17.0.2" and pkt.dst == "203.0.113.2" and pkt.ttl == 64


def test_icmp_probe_carries_mark_seq_and_id() -> None:
    plan = ProbePlan.new("icmp", "10.0.0.1", "10.0.0.2")
    pkt = IP(plan.build(7))
    assert pkt[ICMP].type == 8 and pkt[ICMP].seq == 7 and pkt[ICMP].id == plan.icmp_id
    assert bytes(pkt[ICMP].payload)[:4] == plan.mark.to_bytes(4, "big")
    assert b"flowtrace" in bytes(pkt[ICMP].payload)


def test_tcp_probe_is_a_syn_whose_isn_is_the_mark() -> None:
    plan = ProbePlan.new("tcp", "10.0.0.1", "10.0.0.2", 80)
    pkt = IP(plan.build(2))
    tcp = pkt[TCP]
    assert tcp.flags == "S" and tcp.dport == 80
    assert tcp.seq == plan.seq_mark(2)
    assert dict(tcp.options)["Timestamp"] == (plan.seq_mark(2), 0)
    assert plan.seq_mark(2) != plan.seq_mark(1)


def test_udp_probe_payload_starts_with_the_mark() -> None:
    plan = ProbePlan.new("udp", "10.0.0.1", "10.0.0.2", 53)
    pkt = IP(plan.build(0))
    assert pkt[UDP].dport == 53
    assert bytes(pkt[UDP].payload)[:4] == plan.mark.to_bytes(4, "big")


def test_capture_filters_name_the_mark() -> None:
    plan = ProbePlan.new("tcp", "10.0.0.1", "10.0.0.2", 80)
    expr = plan.capture_filter(2)
    assert f"{plan.seq_mark(0):#x}" in expr and f"{plan.seq_mark(1):#x}" in expr
    icmp = ProbePlan.new("icmp", "10.0.0.1", "10.0.0.2")
    assert f"icmp[8:4] = {icmp.mark:#x}" in icmp.capture_filter(1)


def test_ports_are_required_for_tcp_and_udp() -> None:
    from flowtrace.errors import FlowtraceError

    with pytest.raises(FlowtraceError, match="needs a destination port"):
        ProbePlan.new("tcp", "10.0.0.1", "10.0.0.2")


def _accepts(program: bytes, frame: bytes) -> bool:
    """libpcap's own BPF interpreter (bpf_filter) run on a frame: what the kernel would do."""
    import ctypes

    from flowtrace.capture.bpf import _libpcap

    lib = _libpcap()
    lib.bpf_filter.restype = ctypes.c_uint
    lib.bpf_filter.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint)
    return bool(lib.bpf_filter(program, frame, len(frame), len(frame)))


@pytest.mark.parametrize("kind", ["icmp", "tcp", "udp"])
def test_the_vxlan_form_of_the_filter_finds_probes_inside_an_overlays_datagrams(kind: str) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    from flowtrace.capture.bpf import compile_filter

    plan = ProbePlan.new(kind, "10.213.129.2", "10.213.129.4", None if kind == "icmp" else 80)
    other = ProbePlan.new(kind, "10.213.129.2", "10.213.129.4", None if kind == "icmp" else 80)
    inner = Ether(b"\x02" * 12 + b"\x08\x00") / IP(plan.build(0))
    stranger = Ether(b"\x02" * 12 + b"\x08\x00") / IP(other.build(0))

    def outer(payload: object) -> bytes:
        return bytes(
            Ether()
            / IP(src="198.18.20.2", dst="198.18.20.3")
            / UDP(sport=55437, dport=4789)
            / VXLAN(vni=4097)
            / payload
        )

    plain = compile_filter(plan.capture_filter(1))
    both = compile_filter(plan.capture_filter(1, vxlan=True))
    assert _accepts(both, bytes(inner)) and _accepts(plain, bytes(inner))
    assert _accepts(both, outer(inner)) and not _accepts(plain, outer(inner))
    assert not _accepts(both, outer(stranger))
    assert not _accepts(
        both, bytes(Ether() / IP(src="198.18.20.2", dst="198.18.20.3") / UDP(dport=4789))
    )


# --- IPv6 -----------------------------------------------------------------------------------

SRC6, DST6 = "fd6c:6162:3600::2", "2001:db8:f6::2"


@pytest.mark.parametrize("kind", ["icmp", "udp", "tcp"])
def test_ipv6_checksums_match_scapy(kind: str) -> None:
    from scapy.layers.inet6 import TCP as TCP6
    from scapy.layers.inet6 import UDP as UDP6
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    plan = ProbePlan.new(kind, SRC6, DST6, None if kind == "icmp" else 8086)
    raw = plan.build(2)
    pkt = IPv6(raw)
    layer = {"icmp": ICMPv6EchoRequest, "udp": UDP6, "tcp": TCP6}[kind]
    field = "cksum" if kind == "icmp" else "chksum"
    fresh = IPv6(raw)
    delattr(fresh[layer], field)  # scapy computes it again from the fields
    rebuilt = IPv6(bytes(fresh))
    assert getattr(pkt[layer], field) == getattr(rebuilt[layer], field)
    assert (pkt.src, pkt.dst, pkt.hlim, pkt.plen) == (SRC6, DST6, 64, len(raw) - 40)
    assert pkt.fl == plan.flow_label == plan.mark & 0xFFFFF


def test_ipv6_probes_carry_the_same_marks() -> None:
    from scapy.layers.inet6 import TCP as TCP6
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    icmp = ProbePlan.new("icmp", SRC6, DST6)
    echo = IPv6(icmp.build(5))[ICMPv6EchoRequest]
    assert (echo.type, echo.seq, echo.id) == (128, 5, icmp.icmp_id)
    assert echo.data[:4] == icmp.mark.to_bytes(4, "big") and b"flowtrace" in echo.data
    tcp = ProbePlan.new("tcp", SRC6, DST6, 80)
    assert IPv6(tcp.build(1))[TCP6].seq == tcp.seq_mark(1)


def test_is_request_tells_ipv6_probes_apart_without_an_ip_id() -> None:
    from flowtrace.correlate.decode import decode_frame

    def headers(plan: ProbePlan, seq: int) -> object:
        return decode_frame(plan.build(seq), 229)  # LINKTYPE_IPV6

    for kind in ("icmp", "udp", "tcp"):
        plan = ProbePlan.new(kind, SRC6, DST6, None if kind == "icmp" else 53)
        second = headers(plan, 1)
        assert second is not None and second.ip_id == 0
        assert plan.is_request(second, 1)  # type: ignore[arg-type]
        assert not plan.is_request(second, 0)  # type: ignore[arg-type]
        other = ProbePlan.new(kind, SRC6, DST6, None if kind == "icmp" else 53)
        assert not other.is_request(second, 1)  # type: ignore[arg-type]


def test_ipv6_capture_filters_compile_and_read_the_marks_where_ipv6_puts_them() -> None:
    from flowtrace.capture.bpf import compile_filter

    for kind in ("icmp", "udp", "tcp"):
        plan = ProbePlan.new(kind, SRC6, DST6, None if kind == "icmp" else 80)
        expr = plan.capture_filter(2)
        assert compile_filter(expr)  # libpcap's tcp[] would reject every IPv6 packet
        assert "icmp6[0] = 1 or" in expr  # ICMPv6 errors about the probes
    tcp = ProbePlan.new("tcp", SRC6, DST6, 80)
    assert f"ip6[44:4] = {tcp.seq_mark(1):#x}" in tcp.capture_filter(2)
    icmp = ProbePlan.new("icmp", SRC6, DST6)
    assert f"icmp6[8:4] = {icmp.mark:#x}" in icmp.capture_filter(1)


def test_neighbor_filters_ask_arp_or_ndp_about_one_address() -> None:
    from flowtrace.capture.bpf import compile_filter
    from flowtrace.probe import neighbor_filter

    arp = neighbor_filter("198.51.100.65")
    assert arp.startswith("(arp and") and "0xc6336441" in arp
    ndp = neighbor_filter("fd6c:6162:3600::3")
    assert "icmp6[0] = 135 or icmp6[0] = 136" in ndp
    assert "icmp6[8:4] = 0xfd6c6162" in ndp and "icmp6[20:4] = 0x3" in ndp
    assert compile_filter(arp) and compile_filter(ndp)


def test_addresses_a_probe_cannot_carry_are_one_line_errors() -> None:
    import pytest

    from flowtrace.errors import NoPathError
    from flowtrace.probe import ProbePlan

    with pytest.raises(NoPathError, match="not an IP address"):
        ProbePlan.new("icmp", "10.0.0.1", "c2")
    with pytest.raises(NoPathError, match="different families"):
        ProbePlan.new("icmp", "10.0.0.1", "2001:db8::2")
    with pytest.raises(NoPathError, match="no IPv6 address to send it from"):
        ProbePlan.new("tcp", "", "2001:db8::2", 80)
    assert ProbePlan.new("udp", "2001:db8::1", "2001:db8::2", 53).dst_ip == "2001:db8::2"
