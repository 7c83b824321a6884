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
