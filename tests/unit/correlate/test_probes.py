"""correlate.probes: packets numbered by the marks a trace puts in its probes."""

from __future__ import annotations

from flowtrace.correlate.probes import ProbeNumbers, isn_of
from flowtrace.model import Headers, Packet, Sighting


def tcp_packet(direction: str, flags: int, seq: int, ack: int, at_ns: int) -> Packet:
    headers = Headers(4, "203.0.113.2", "203.0.113.1", 6, 1, 64, 40, 40000, 8080,
                      tcp_seq=seq, tcp_ack=ack, tcp_flags=flags)  # fmt: skip
    sighting = Sighting("outside/eth0", at_ns, headers)
    return Packet(0, direction, (sighting,))  # type: ignore[arg-type]


def test_tcp_probe_numbers_survive_a_sequence_wrap_and_ignore_strangers() -> None:
    numbers = ProbeNumbers("tcp", 3, "outside/eth0")
    mark = 0xFFFF_F001  # probe 1's ISN wraps past 2**32
    syn, synack, rst = 0x02, 0x12, 0x04
    packets = []
    for probe in range(3):
        isn = (mark + probe * 0x10000) % 2**32
        packets += [
            tcp_packet("request", syn, isn, 0, probe * 10),
            tcp_packet("reply", synack, 12345, (isn + 1) % 2**32, probe * 10 + 1),
            tcp_packet("request", rst, (isn + 1) % 2**32, 0, probe * 10 + 2),
        ]
    assert [numbers.number(p) for p in packets] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # A SYN that is none of the trace's (its low half differs) is not given a number of its own.
    stranger = tcp_packet("request", syn, (mark + 5) % 2**32, 0, 100)
    assert numbers.number(stranger) == 2  # the latest probe, like any unmarked packet


def echo_packet(direction: str, icmp_type: int, seq: int, ip_id: int, at_ns: int) -> Packet:
    headers = Headers(4, "172.17.0.2", "172.17.0.3", 1, ip_id, 64, 60, icmp_type=icmp_type,
                      icmp_id=5, icmp_seq=seq)  # fmt: skip
    return Packet(0, direction, (Sighting("c1/eth0", at_ns, headers),))  # type: ignore[arg-type]


def udp_packet(direction: str, at_ns: int, point: str = "c1/eth0") -> Packet:
    headers = Headers(4, "172.17.0.2", "172.17.0.3", 17, 3, 64, 60, 40000, 53)
    return Packet(0, direction, (Sighting(point, at_ns, headers),))  # type: ignore[arg-type]


def test_echo_probes_are_their_sequence_numbers_below_the_count() -> None:
    numbers = ProbeNumbers("icmp", 2, "c1/eth0")
    assert numbers.number(echo_packet("request", 8, 1, 11, 10)) == 1
    assert numbers.number(echo_packet("reply", 0, 0, 12, 20)) == 0
    assert numbers.number(echo_packet("request", 8, 7, 13, 30)) == 1  # not ours: the latest


def test_a_live_run_numbers_by_ip_id_and_send_time() -> None:
    numbers = ProbeNumbers("udp", 3, "c1/eth0")
    numbers.sent(0, 100, 1_000)
    numbers.sent(1, 200, 2_000)
    request = udp_packet("request", 2_100)
    assert numbers.number(request) == 1  # its IP ID is not one sent: by time
    answer = udp_packet("reply", 1_500)
    assert numbers.number(answer) == 0  # the newest probe sent before it
    assert numbers.number(udp_packet("reply", 500)) is None  # before any probe


def test_a_set_counts_udp_probes_leaving_the_source() -> None:
    numbers = ProbeNumbers("udp", 3, "c1/eth0")
    got = [
        numbers.number(udp_packet("request", 1)),
        numbers.number(udp_packet("reply", 2, "c2/eth0")),
        numbers.number(udp_packet("request", 3)),
        numbers.number(udp_packet("request", 4, "host/docker0")),  # not at the source
    ]
    assert got == [0, 0, 1, 1]


def test_a_known_mark_numbers_tcp_at_once_and_strangers_are_foreign_with_a_proxy() -> None:
    mark = 0x1234_0001
    numbers = ProbeNumbers("tcp", 2, "outside/eth0", mark=mark, unmarked_tcp_is_foreign=True)
    synack = tcp_packet("reply", 0x12, 999, isn_of(mark, 1) + 1, 5)
    assert numbers.number(synack) == 1  # no SYN seen yet: the live run knows the mark
    assert numbers.answers(synack, 1)
    leg = tcp_packet("request", 0x02, 0x5555_0000, 0, 6)
    assert numbers.number(leg) is None  # a docker-proxy leg belongs to no probe


def test_ipv6_probes_are_numbered_by_their_marks_without_an_ip_id() -> None:
    numbers = ProbeNumbers("udp", 3, "v6a/eth0")
    payload = b"\x12\x34\x56\x78flowtrace\x00\x02\x00"
    udp = Headers(6, "fd6c:6162:3600::2", "2001:db8:f6::2", 17, 0, 64, 80, 40000, 53,
                  payload_digest=payload)  # fmt: skip
    request = Packet(0, "request", (Sighting("v6a/eth0", 5, udp),))
    assert numbers.number(request) == 2
    error = Headers(6, "2001:db8:f6::2", "fd6c:6162:3600::2", 58, 0, 64, 120, icmp_type=1,
                    icmp_code=4, inner=udp)  # fmt: skip
    assert numbers.number(Packet(0, "reply", (Sighting("v6a/eth0", 9, error),))) == 2
    echo6 = Headers(6, "fd6c:6162:3600::2", "2001:db8:f6::2", 58, 0, 64, 80, icmp_type=129,
                    icmp_id=3, icmp_seq=1)  # fmt: skip
    assert (
        ProbeNumbers("icmp", 2, None).number(Packet(0, "reply", (Sighting("v6a/eth0", 1, echo6),)))
        == 1
    )
    stranger = udp._replace(payload_digest=b"\x00" * 16)
    numbers.sent(0, None, 1)  # an IPv6 probe has no IP ID to remember
    assert numbers.ip_ids == {}
    assert numbers.number(Packet(0, "request", (Sighting("v6a/eth0", 20, stranger),))) == 0
