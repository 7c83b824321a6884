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
