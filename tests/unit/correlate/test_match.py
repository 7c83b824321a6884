"""correlate() on constructed captures: real frame bytes (built with scapy), decoded as a
capture would decode them, seen at the points of real container paths."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet as ScapyPacket

from flowtrace.correlate.decode import decode_frame
from flowtrace.correlate.match import Correlator, correlate
from flowtrace.model import Packet, Sighting

ETH = Ether(src="02:42:ac:11:00:02", dst="02:42:ac:11:00:03")
HOP_NS = 10_000  # a veth hop takes 5-16 us here
T0 = 1_700_000_000_000_000_000

#: c1 -> c2 on the default bridge.
BRIDGE = ["c1/eth0", "host/veth1", "host/docker0", "host/veth2", "c2/eth0"]
#: c1 -> an outside address, MASQUERADEd on the way out of host/eth0.
UPLINK = ["c1/eth0", "host/veth1", "host/docker0", "host/eth0", "ext/eth0"]
#: outside -> a published port (-p 8080:80) of c2.
PUBLISHED = ["ext/eth0", "host/eth0", "host/docker0", "host/veth2", "c2/eth0"]

C1, C2, C4 = "172.17.0.2", "172.17.0.3", "172.17.0.4"
HOST_UPLINK, OUTSIDE = "198.51.100.1", "203.0.113.2"


def along(
    points: Sequence[str],
    start_ns: int,
    versions: ScapyPacket | Sequence[ScapyPacket],
    step_ns: int = HOP_NS,
    outbound: Sequence[bool | None] | None = None,
) -> list[Sighting]:
    """One packet seen at each point in turn; `versions` gives its bytes at each point."""
    if isinstance(versions, ScapyPacket):
        versions = [versions] * len(points)
    flags = outbound or [None] * len(points)
    sightings = []
    for i, (point, pkt) in enumerate(zip(points, versions, strict=True)):
        headers = decode_frame(bytes(ETH / pkt))
        assert headers is not None
        sightings.append(Sighting(point, start_ns + i * step_ns, headers, flags[i]))
    return sightings


def echo(
    src: str, dst: str, ident: int = 7, seq: int = 1, reply: bool = False, ip_id: int = 1000
) -> ScapyPacket:
    return (
        IP(src=src, dst=dst, id=ip_id)
        / ICMP(type=0 if reply else 8, id=ident, seq=seq)
        / (b"\x65\x4f\x2a\x11" + bytes(52))
    )


def tcp(
    src: str,
    sport: int,
    dst: str,
    dport: int,
    flags: str,
    seq: int,
    ack: int = 0,
    ip_id: int = 1,
    data: bytes = b"",
) -> ScapyPacket:
    return (
        IP(src=src, dst=dst, id=ip_id, flags="DF")
        / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)
        / data
    )


def points_of(pkt: Packet) -> list[str]:
    return [s.point for s in pkt.sightings]


def nat_summary(pkt: Packet) -> list[tuple[str, tuple[str, str], str, str, str | None]]:
    return [(e.kind, e.between, str(e.before), str(e.after), e.reverse_of) for e in pkt.nat]


def test_ping_across_the_default_bridge() -> None:
    request = along(BRIDGE, T0, echo(C1, C2), outbound=[True, False, None, True, False])
    reply = along(
        BRIDGE[::-1],
        T0 + 200_000,
        echo(C2, C1, reply=True, ip_id=5000),
        outbound=[True, False, None, True, False],
    )
    packets = list(correlate(request + reply, BRIDGE))
    assert [(p.packet_id, p.direction) for p in packets] == [(1, "request"), (2, "reply")]
    assert points_of(packets[0]) == BRIDGE
    assert points_of(packets[1]) == BRIDGE[::-1]
    assert packets[0].hop_deltas_ns() == [HOP_NS] * 4
    assert packets[0].nat == () and packets[1].nat == ()


def test_masquerade_to_the_outside_and_the_reply_put_back() -> None:
    out = [echo(C1, OUTSIDE)] * 3 + [echo(HOST_UPLINK, OUTSIDE)] * 2
    back = [echo(OUTSIDE, HOST_UPLINK, reply=True, ip_id=9)] * 2 + [
        echo(OUTSIDE, C1, reply=True, ip_id=9)
    ] * 3
    packets = list(
        correlate(along(UPLINK, T0, out) + along(UPLINK[::-1], T0 + 500_000, back), UPLINK)
    )
    request, reply = packets
    assert nat_summary(request) == [
        ("SNAT", ("host/docker0", "host/eth0"), f"{C1}:7", f"{HOST_UPLINK}:7", None)
    ]
    assert nat_summary(reply) == [
        ("DNAT", ("host/eth0", "host/docker0"), f"{HOST_UPLINK}:7", f"{C1}:7", "SNAT")
    ]


def test_masquerade_that_rewrites_the_icmp_id_still_makes_one_packet() -> None:
    out = [echo(C1, OUTSIDE, ident=7)] * 3 + [echo(HOST_UPLINK, OUTSIDE, ident=1)] * 2
    back = [echo(OUTSIDE, HOST_UPLINK, ident=1, reply=True)] * 2 + [
        echo(OUTSIDE, C1, ident=7, reply=True)
    ] * 3
    request, reply = correlate(along(UPLINK, T0, out) + along(UPLINK[::-1], T0 + 10**6, back))
    assert points_of(request) == UPLINK and points_of(reply) == UPLINK[::-1]
    assert nat_summary(request) == [
        ("SNAT", ("host/docker0", "host/eth0"), f"{C1}:7", f"{HOST_UPLINK}:1", None)
    ]
    assert nat_summary(reply) == [
        ("DNAT", ("host/eth0", "host/docker0"), f"{HOST_UPLINK}:1", f"{C1}:7", "SNAT")
    ]


def published_port_handshake() -> list[Sighting]:
    """SYN to 198.51.100.1:8080 (DNAT to 172.17.0.4:80), SYN-ACK with IP ID 0, ACK, data."""
    syn_out = tcp(OUTSIDE, 5555, HOST_UPLINK, 8080, "S", 1000, ip_id=41)
    syn_in = tcp(OUTSIDE, 5555, C4, 80, "S", 1000, ip_id=41)
    synack_in = tcp(C4, 80, OUTSIDE, 5555, "SA", 7000, 1001, ip_id=0)
    synack_out = tcp(HOST_UPLINK, 8080, OUTSIDE, 5555, "SA", 7000, 1001, ip_id=0)
    ack_out = tcp(OUTSIDE, 5555, HOST_UPLINK, 8080, "A", 1001, 7001, ip_id=42)
    ack_in = tcp(OUTSIDE, 5555, C4, 80, "A", 1001, 7001, ip_id=42)
    data_in = tcp(C4, 80, OUTSIDE, 5555, "PA", 7001, 1001, ip_id=1, data=b"HTTP/1.0 200 OK\r\n")
    data_out = tcp(
        HOST_UPLINK, 8080, OUTSIDE, 5555, "PA", 7001, 1001, ip_id=1, data=b"HTTP/1.0 200 OK\r\n"
    )
    reverse = PUBLISHED[::-1]
    return (
        along(PUBLISHED, T0, [syn_out, syn_out, syn_in, syn_in, syn_in])
        + along(reverse, T0 + 100_000, [synack_in] * 3 + [synack_out] * 2)
        + along(PUBLISHED, T0 + 200_000, [ack_out, ack_out, ack_in, ack_in, ack_in])
        + along(reverse, T0 + 300_000, [data_in] * 3 + [data_out] * 2)
    )


def test_published_port_dnat_and_the_syn_ack_back() -> None:
    packets = list(correlate(published_port_handshake(), PUBLISHED))
    assert [p.direction for p in packets] == ["request", "reply", "request", "reply"]
    syn, synack, ack, data = packets
    assert all(len(p.sightings) == 5 for p in packets)
    assert nat_summary(syn) == [
        ("DNAT", ("host/eth0", "host/docker0"), f"{HOST_UPLINK}:8080", f"{C4}:80", None)
    ]
    assert synack.first.headers.ip_id == 0
    assert nat_summary(synack) == [
        ("SNAT", ("host/docker0", "host/eth0"), f"{C4}:80", f"{HOST_UPLINK}:8080", "DNAT")
    ]
    assert nat_summary(ack)[0][0] == "DNAT"
    assert nat_summary(data)[0][4] == "DNAT"


def test_bounded_disorder_gives_the_same_packets() -> None:
    ordered = published_port_handshake() + along(UPLINK, T0 + 400_000, echo(C1, OUTSIDE))
    expected = list(correlate(ordered, PUBLISHED))
    shuffled = list(ordered)
    rng = random.Random(7)
    for _ in range(200):  # swaps between sightings at most 100 us apart: far below window/2
        i = rng.randrange(len(shuffled) - 1)
        j = min(len(shuffled) - 1, i + rng.randrange(1, 4))
        if abs(shuffled[i].time_ns - shuffled[j].time_ns) <= 100_000:
            shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    assert shuffled != ordered
    assert list(correlate(shuffled, PUBLISHED)) == expected


def test_a_retransmitted_syn_is_a_second_packet() -> None:
    syn = tcp(C1, 40000, C2, 80, "S", 1000, ip_id=0)  # same bytes both times
    sightings = along(BRIDGE, T0, syn) + along(BRIDGE, T0 + 1_000_000_000, syn)
    first, second = correlate(sightings, BRIDGE)
    assert (first.direction, second.direction) == ("request", "request")
    assert points_of(first) == BRIDGE and points_of(second) == BRIDGE
    assert second.first.time_ns - first.first.time_ns == 1_000_000_000


def test_a_repeat_after_the_window_is_a_new_packet_even_at_a_new_point() -> None:
    ping = echo(C1, C2)
    sightings = along(BRIDGE[:2], T0, ping) + along(BRIDGE[2:], T0 + 3_000_000_000, ping)
    packets = list(correlate(sightings, BRIDGE, window_ns=2_000_000_000))
    assert [points_of(p) for p in packets] == [BRIDGE[:2], BRIDGE[2:]]


def test_loopback_shows_each_packet_twice_and_that_is_one_packet() -> None:
    lo = ["host/lo"]
    request = echo("127.0.0.1", "127.0.0.1", ip_id=10)
    reply = echo("127.0.0.1", "127.0.0.1", reply=True, ip_id=11)
    for out, back in ((True, False), (None, None)):  # with and without direction flags
        twice = [
            *along(lo, T0, request, outbound=[out]),
            *along(lo, T0 + 2_000, request, outbound=[back]),
            *along(lo, T0 + 40_000, reply, outbound=[out]),
            *along(lo, T0 + 42_000, reply, outbound=[back]),
        ]
        packets = list(correlate(twice, lo))
        assert [(p.direction, len(p.sightings)) for p in packets] == [("request", 2), ("reply", 2)]
        assert packets[0].nat == ()
        assert [s.outbound for s in packets[0].sightings] == [out, back]


def test_loopback_udp_to_the_same_port_is_its_own_reverse_and_still_one_packet() -> None:
    datagram = IP(src="127.0.0.1", dst="127.0.0.1", id=0) / UDP(sport=5000, dport=5000) / b"x"
    twice = along(["host/lo"], T0, datagram, outbound=[True]) + along(
        ["host/lo"], T0 + 1_000, datagram, outbound=[False]
    )
    assert [len(p.sightings) for p in correlate(twice)] == [2]


def test_without_direction_flags_a_late_repeat_on_loopback_is_a_retransmission() -> None:
    ping = echo("127.0.0.1", "127.0.0.1")
    sightings = along(["host/lo"], T0, ping) + along(["host/lo"], T0 + 50_000_000, ping)
    assert [len(p.sightings) for p in correlate(sightings)] == [1, 1]


def test_ip_id_zero_does_not_merge_packets_of_one_flow() -> None:
    def datagram(src: str, sport: int, dst: str, dport: int, data: bytes) -> ScapyPacket:
        return IP(src=src, dst=dst, id=0, flags="DF") / UDP(sport=sport, dport=dport) / data

    # Two answers of one server with IP ID 0, and an echo server that returns the request
    # byte for byte: the same fingerprint in both directions.
    sightings = (
        along(BRIDGE, T0, datagram(C1, 4000, C2, 7, b"same bytes back"))
        + along(
            BRIDGE[::-1],
            T0 + 100_000,
            datagram(C2, 7, C1, 4000, b"same bytes back"),
            outbound=[True, False, None, True, False],
        )
        + along(BRIDGE[::-1], T0 + 200_000, datagram(C2, 7, C1, 4000, b"second answer!!"))
    )
    packets = list(correlate(sightings, BRIDGE))
    assert [(p.direction, points_of(p)) for p in packets] == [
        ("request", BRIDGE),
        ("reply", BRIDGE[::-1]),
        ("reply", BRIDGE[::-1]),
    ]


def test_the_echo_of_identical_bytes_without_direction_flags_is_still_two_packets() -> None:
    def datagram(src: str, sport: int, dst: str, dport: int) -> ScapyPacket:
        return IP(src=src, dst=dst, id=0, flags="DF") / UDP(sport=sport, dport=dport) / b"ping"

    sightings = along(BRIDGE, T0, datagram(C1, 4000, C2, 7)) + along(
        BRIDGE[::-1], T0 + 45_000, datagram(C2, 7, C1, 4000)
    )
    packets = list(correlate(sightings, BRIDGE))
    assert [(p.direction, len(p.sightings)) for p in packets] == [("request", 5), ("reply", 5)]


def test_a_hairpin_through_the_bridge_is_one_packet_seen_twice_there() -> None:
    before = tcp(C1, 40000, HOST_UPLINK, 8080, "S", 1000, ip_id=3)
    after = tcp("172.17.0.1", 40000, C4, 80, "S", 1000, ip_id=3)
    points = ["c1/eth0", "host/veth1", "host/docker0", "host/docker0", "host/veth2", "c2/eth0"]
    sightings = along(
        points, T0, [before] * 3 + [after] * 3, outbound=[True, False, False, True, True, False]
    )
    (packet,) = correlate(sightings, BRIDGE)
    assert points_of(packet) == points
    assert nat_summary(packet) == [
        ("SNAT", ("host/docker0", "host/docker0"), f"{C1}:40000", "172.17.0.1:40000", None),
        ("DNAT", ("host/docker0", "host/docker0"), f"{HOST_UPLINK}:8080", f"{C4}:80", None),
    ]


def test_a_time_exceeded_error_is_the_reply_to_what_it_quotes() -> None:
    probe_inside = IP(src=C1, dst=OUTSIDE, id=77, ttl=2) / UDP(sport=33434, dport=33435) / b"probe"
    probe_outside = (
        IP(src=HOST_UPLINK, dst=OUTSIDE, id=77, ttl=1) / UDP(sport=33434, dport=33435) / b"probe"
    )

    def error(dst: str, quoted: ScapyPacket) -> ScapyPacket:
        return IP(src="203.0.113.1", dst=dst, id=500) / ICMP(type=11, code=0) / bytes(quoted)

    sightings = along(UPLINK[:4], T0, [probe_inside] * 3 + [probe_outside]) + along(
        UPLINK[3::-1],
        T0 + 300_000,
        [error(HOST_UPLINK, probe_outside)] + [error(C1, probe_inside)] * 3,
    )
    probe, answer = correlate(sightings, UPLINK)
    assert probe.direction == "request" and answer.direction == "reply"
    assert points_of(answer) == UPLINK[3::-1]
    assert nat_summary(answer) == [("DNAT", ("host/eth0", "host/docker0"), HOST_UPLINK, C1, "SNAT")]


def test_a_reset_answering_a_syn_is_a_reply() -> None:
    syn = tcp(C1, 40000, C2, 81, "S", 1000, ip_id=9)
    rst = tcp(C2, 81, C1, 40000, "RA", 0, 1001, ip_id=0)
    packets = list(correlate(along(BRIDGE, T0, syn) + along(BRIDGE[::-1], T0 + 50_000, rst)))
    assert [p.direction for p in packets] == ["request", "reply"]


def test_udp_requester_is_whoever_spoke_first() -> None:
    server_first = IP(src=C2, dst=C1, id=1) / UDP(sport=53, dport=4000) / b"unsolicited"
    client_after = IP(src=C1, dst=C2, id=2) / UDP(sport=4000, dport=53) / b"answer"
    packets = list(
        correlate(along(BRIDGE[::-1], T0, server_first) + along(BRIDGE, T0 + 10**6, client_after))
    )
    assert [p.direction for p in packets] == ["request", "reply"]


def test_equal_timestamps_follow_point_order_and_reverse_it_for_replies() -> None:
    request = along(BRIDGE[::-1], T0, echo(C1, C2), step_ns=0)  # arrives in the wrong order
    reply = along(BRIDGE, T0 + 1000, echo(C2, C1, reply=True), step_ns=0)
    out_request, out_reply = correlate(request + reply, BRIDGE)
    assert points_of(out_request) == BRIDGE
    assert points_of(out_reply) == BRIDGE[::-1]


def test_packet_ids_follow_the_first_sighting_when_packets_interleave() -> None:
    slow = along(BRIDGE, T0, echo(C1, C2, seq=1), step_ns=50_000)  # spans 200 us
    fast = along(BRIDGE, T0 + 20_000, echo(C1, C2, seq=2), step_ns=5_000)  # over by 40 us
    mixed = sorted(fast + slow, key=lambda s: s.time_ns)
    packets = list(correlate(mixed, BRIDGE))
    assert [(p.packet_id, p.first.headers.icmp_seq) for p in packets] == [(1, 1), (2, 2)]


def test_packets_come_out_while_input_continues() -> None:
    correlator = Correlator(BRIDGE, window_ns=1_000_000)
    out: list[Packet] = []
    for k in range(10):
        for s in along(BRIDGE, T0 + k * 10_000_000, echo(C1, C2, seq=k)):
            out.extend(correlator.add(s))
    assert [p.packet_id for p in out] == list(range(1, 9))  # all but the last, still open
    rest = correlator.finish()
    assert [p.packet_id for p in rest] == [9, 10]


def test_memory_stays_flat_over_a_long_stream() -> None:
    correlator = Correlator(BRIDGE[:3], window_ns=20_000_000, flow_timeout_ns=2_000_000_000)
    template = decode_frame(bytes(ETH / echo(C1, C2)))
    assert template is not None
    most_held = most_flows = emitted = 0
    for k in range(4000):  # one new flow every ms: 4 s of stream, 12,000 sightings
        headers = template._replace(icmp_id=k, ip_id=k)
        for i, point in enumerate(BRIDGE[:3]):
            emitted += len(
                correlator.add(Sighting(point, T0 + k * 1_000_000 + i * HOP_NS, headers))
            )
        most_held = max(most_held, correlator.held)
        most_flows = max(most_flows, correlator.flows)
    emitted += len(correlator.finish())
    assert emitted == 4000
    assert most_held <= 3 * 35  # 1.5 windows of 1 ms pings, 3 sightings each
    assert most_flows <= 2600  # 1.25 flow timeouts of one flow per ms


def test_a_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Correlator(BRIDGE, window_ns=0)


#: c1 on host A -> B's published port: A's MASQUERADE, B's DNAT (two clocks).
ACROSS = [
    "c1@hosta/eth0",
    "host@hosta/docker0",
    "host@hosta/eth0",
    "host@hostb/eth0",
    "host@hostb/docker0",
    "web@hostb/eth0",
]
A_LAN, B_LAN, WEB_B = "198.18.20.2", "198.18.20.3", "10.213.2.2"


def _behind(sightings: list[Sighting], ns: int) -> list[Sighting]:
    """Host B's sightings as a clock estimated `ns` behind the truth puts them."""
    return [s._replace(time_ns=s.time_ns - ns) if "@hostb/" in s.point else s for s in sightings]


def test_across_hosts_sightings_go_in_path_order_whatever_the_clocks_say() -> None:
    """Host B's clock is estimated 40 us behind the truth: B's sightings of the SYN look
    earlier than A's uplink, which time order would put first (and explain the NAT
    between the wrong points); in path order the rewrites are where they happened."""
    syn = [tcp(C1, 40000, B_LAN, 8080, "S", 77)] * 2
    syn += [tcp(A_LAN, 40000, B_LAN, 8080, "S", 77)] * 2
    syn += [tcp(A_LAN, 40000, WEB_B, 80, "S", 77)] * 2
    ack = [tcp(WEB_B, 80, A_LAN, 40000, "SA", 900, 78)] * 2
    ack += [tcp(B_LAN, 8080, A_LAN, 40000, "SA", 900, 78)] * 2
    ack += [tcp(B_LAN, 8080, C1, 40000, "SA", 900, 78)] * 2
    request_sightings = _behind(along(ACROSS, T0, syn), 40_000)
    reply_sightings = _behind(along(ACROSS[::-1], T0 + 300_000, ack), 40_000)
    request, reply = correlate(request_sightings + reply_sightings, ACROSS, by_path=True)
    assert points_of(request) == ACROSS
    assert points_of(reply) == ACROSS[::-1]
    assert [(kind, between) for kind, between, *_ in nat_summary(request)] == [
        ("SNAT", ("host@hosta/docker0", "host@hosta/eth0")),
        ("DNAT", ("host@hostb/eth0", "host@hostb/docker0")),
    ]
    assert request.hop_deltas_ns()[2] == HOP_NS - 40_000  # shown as measured, with its bound
    time_ordered = next(iter(correlate(request_sightings, ACROSS)))
    assert points_of(time_ordered) != ACROSS  # what path order is for
