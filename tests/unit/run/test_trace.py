"""A trace over a path the walk predicts blocked (macvlan isolation): the ARP it captures
and the verdict it gives, on recorded frames."""

from __future__ import annotations

import socket
import struct

from flowtrace.capture.bpf import compile_filter
from flowtrace.correlate.decode import arp_fields
from flowtrace.correlate.verdicts import NoExplainer, arp_seen, decide
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
    first = decide(0, [], facts, NoExplainer(), arp_seen(frames, ids, 1_000, 5_000))
    second = decide(1, [], facts, NoExplainer(), arp_seen(frames, ids, 5_000, None))
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
        0, [], t.probe_facts(), NoExplainer(), arp_seen(frames, t.point_ids, 1_000, None)
    )
    assert verdict.detail == "not seen leaving the source"
