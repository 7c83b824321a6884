"""A trace over a path the walk predicts blocked (macvlan isolation): the ARP it captures
and the verdict it gives, on recorded frames."""

from __future__ import annotations

import socket
import struct

from flowtrace.capture.bpf import compile_filter
from flowtrace.correlate.decode import arp_fields
from flowtrace.correlate.verdicts import NoExplainer, decide, neighbor_seen
from flowtrace.model import Endpoint, Frame, Namespace, Point, TraceOptions
from flowtrace.run.trace import ProbeTrace
from flowtrace.topology.path import Blocked, PathPlan
from flowtrace.topology.route import Route

M1 = Namespace("/proc/31/ns/net", "m1", 31, "m1")
HOST = Namespace("/proc/self/ns/net", "host", 1)
WHY = "m1/eth0 is a macvlan child of host/ft-l2a, and 198.51.100.65 belongs to host itself"


def arp(op: int, sender: str, target: str) -> bytes:
    mac = bytes.fromhex("0242c6336443")
    header = (b"\xff" * 6 if op == 1 else mac) + mac + b"\x08\x06"
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
    body += mac + socket.inet_aton(sender) + bytes(6) + socket.inet_aton(target)
    return header + body


def tracer(count: int = 1) -> ProbeTrace:
    points = [
        Point("m1/eth0", M1, "eth0", 2, "source"),
        Point("host/ft-l2a", HOST, "ft-l2a", 20, "parent"),
    ]
    plan = PathPlan(
        points=points,
        src_ip="198.51.100.67",
        dst_ip="198.51.100.65",
        blocked=Blocked(WHY, "198.51.100.65"),
    )
    src = Endpoint("m1", M1, ("198.51.100.67",), "198.51.100.67")
    dst = Endpoint("host", HOST, ("198.51.100.65",), "198.51.100.65")
    return ProbeTrace(Route(src, dst, "198.51.100.65", None, plan), TraceOptions(count=count))


def test_arp_fields_reads_ipv4_arp_only() -> None:
    assert arp_fields(arp(1, "198.51.100.67", "198.51.100.65")) == (
        1,
        "198.51.100.67",
        "198.51.100.65",
    )
    assert arp_fields(arp(2, "198.51.100.65", "198.51.100.67"))[0] == 2  # type: ignore[index]
    ip_frame = bytes(12) + b"\x08\x00" + bytes(28)
    assert arp_fields(ip_frame) is None
    assert arp_fields(arp(1, "198.51.100.67", "198.51.100.65")[:30]) is None


def test_a_blocked_path_also_captures_the_arp_about_the_neighbour() -> None:
    expr = tracer().capture_filter()
    assert expr.endswith("or (arp and (arp[24:4] = 0xc6336441 or arp[14:4] = 0xc6336441))")
    assert compile_filter(expr)  # libpcap accepts it


def test_an_open_path_captures_only_the_probes() -> None:
    t = tracer()
    t.route.plan.blocked = None
    assert "arp" not in t.capture_filter()


def test_the_verdict_counts_the_unanswered_arp_where_it_was_seen() -> None:
    t = tracer(count=2)
    ids = t.point_ids
    request = arp(1, "198.51.100.67", "198.51.100.65")
    other = arp(1, "198.51.100.67", "198.51.100.66")
    frames = [
        Frame(0, 1_100, request, len(request), True),
        Frame(1, 1_110, request, len(request), True),
        Frame(0, 2_100, request, len(request), True),
        Frame(1, 2_110, request, len(request), True),
        Frame(0, 2_500, other, len(other), True),
    ]
    facts = t.probe_facts()
    first = decide(0, [], facts, NoExplainer(), neighbor_seen(frames, ids, 1_000, 5_000))
    second = decide(1, [], facts, NoExplainer(), neighbor_seen(frames, ids, 5_000, None))
    assert (first.outcome, first.last_point) == ("lost", "host/ft-l2a")
    assert first.detail == (
        "never left m1: its ARP request for 198.51.100.65 (2 sent, seen at m1/eth0 and "
        f"host/ft-l2a) was never answered; {WHY}"
    )
    assert (second.outcome, second.last_point) == ("lost", None)  # no ARP of its own
    assert second.detail == f"never left m1: {WHY}"
    assert str(second).startswith("lost before the first point (never left m1: ")


def test_an_answered_arp_means_the_prediction_was_wrong() -> None:
    t = tracer()
    answer = arp(2, "198.51.100.65", "198.51.100.67")
    frames = [Frame(0, 1_200, answer, len(answer), False)]
    verdict = decide(
        0, [], t.probe_facts(), NoExplainer(), neighbor_seen(frames, t.point_ids, 1_000, None)
    )
    assert verdict.detail == "not seen leaving the source"


# --- IPv6: the first hop's NDP, ICMPv6 errors about other packets ----------------------------

V6A = Namespace("/proc/41/ns/net", "v6a", 41, "v6a")
V6B = Namespace("/proc/42/ns/net", "v6b", 42, "v6b")
A6, B6 = "fd6c:6162:3600::2", "fd6c:6162:3600::3"


def tracer6(kind: str = "icmp") -> ProbeTrace:
    points = [
        Point("v6a/eth0", V6A, "eth0", 2, "source", addresses=(A6,)),
        Point("host/br-6", HOST, "br-6", 30, "bridge", promisc=True),
        Point("v6b/eth0", V6B, "eth0", 2, "destination", addresses=(B6,)),
    ]
    plan = PathPlan(points=points, src_ip=A6, dst_ip=B6, first_hop=B6, destination="v6b/eth0")
    src = Endpoint("v6a", V6A, (A6,), None)
    dst = Endpoint("v6b", V6B, (B6,), None)
    port = None if kind == "icmp" else 9
    return ProbeTrace(Route(src, dst, B6, port, plan), TraceOptions(kind=kind))  # type: ignore[arg-type]


def test_an_ipv6_trace_captures_the_first_hops_ndp_and_follows_none_of_it() -> None:
    from scapy.layers.inet6 import ICMPv6ND_NS, IPv6
    from scapy.layers.l2 import Ether

    from flowtrace.correlate.decode import decode_frame

    t = tracer6()
    expr = t.capture_filter()
    assert "icmp6[0] = 135 or icmp6[0] = 136" in expr and "icmp6[20:4] = 0x3" in expr
    assert compile_filter(expr)
    solicitation = bytes(Ether() / IPv6(src=A6, dst="ff02::1:ff00:3") / ICMPv6ND_NS(tgt=B6))
    headers = decode_frame(solicitation)
    assert headers is not None and t.keep(headers) and not t.sight(headers)
    facts = t.probe_facts()
    assert (facts.first_hop, facts.first_hop_owner) == (B6, "v6b")
    frames = [Frame(i, 1_000 + i, solicitation, len(solicitation), i == 0) for i in range(3)]
    verdict = decide(0, [], facts, NoExplainer(), neighbor_seen(frames, t.point_ids, 0, None))
    assert verdict.detail.startswith(f"never left v6a: its neighbour solicitations for {B6}")


def test_an_icmpv6_error_about_a_packet_no_probe_sent_is_not_kept() -> None:
    from scapy.layers.inet6 import UDP, ICMPv6DestUnreach, IPv6
    from scapy.layers.l2 import Ether

    from flowtrace.correlate.decode import decode_frame

    t = tracer6("udp")
    t.numbers.sent(0, None, 1)
    ours = decode_frame(t.probe.build(0), 229)
    assert ours is not None
    theirs = IPv6(src=A6, dst=B6) / UDP(sport=5353, dport=9) / b"someone else's datagram"
    for quoted, kept in ((t.probe.build(0), True), (bytes(theirs), False)):
        error = Ether() / IPv6(src=B6, dst=A6) / ICMPv6DestUnreach(code=4) / quoted
        headers = decode_frame(bytes(error))
        assert headers is not None and headers.inner is not None
        assert t.keep(headers) is kept
    assert t.quoted_probe(ours) == 0
