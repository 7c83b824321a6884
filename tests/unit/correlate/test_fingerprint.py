"""One packet's identity across NAT66 and NPTv6: the fields they leave alone.

NAT66 (Docker's MASQUERADE of a network's ULA) rewrites the source address and, for
ICMPv6 echo, may rewrite the identifier like a port; NPTv6 rewrites the address
prefix, checksum-neutrally.  Hop limits drop by one per router, and the flow label may
be set afresh on the way (a tunnel, a load balancer; Linux itself leaves a forwarded
packet's label alone, which the integration tests see): the fingerprint uses none of
these.  IPv6 has no IP ID, so the payload and transport fields carry the identity.
"""

from __future__ import annotations

from scapy.layers.inet import TCP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether

from flowtrace.correlate.decode import decode_frame
from flowtrace.correlate.fingerprint import fingerprint
from flowtrace.correlate.match import correlate
from flowtrace.model import Headers, Sighting

ETH = Ether(src="02:42:ac:12:00:02", dst="02:42:ac:12:00:01")
ULA, OUT, HOST = "fd6c:6162:3600::2", "2001:db8:f6::2", "2001:db8:f6::1"
MARK = b"\x12\x34\x56\x78flowtrace\x00\x00" + bytes(17)


def headers(pkt: object) -> Headers:
    found = decode_frame(bytes(ETH / pkt))  # type: ignore[operator]
    assert found is not None
    return found


def test_nat66_and_hop_limit_and_flow_label_leave_the_fingerprint_alone() -> None:
    inside = headers(
        IPv6(src=ULA, dst=OUT, fl=0x8AAFF, hlim=64) / ICMPv6EchoRequest(id=7, seq=0, data=MARK)
    )
    masqueraded = headers(
        IPv6(src=HOST, dst=OUT, fl=0x12345, hlim=63) / ICMPv6EchoRequest(id=9, seq=0, data=MARK)
    )
    assert (inside.src, inside.icmp_id) != (masqueraded.src, masqueraded.icmp_id)
    assert fingerprint(inside) == fingerprint(masqueraded)


def test_nptv6_prefix_translation_leaves_a_tcp_fingerprint_alone() -> None:
    syn = TCP(sport=40000, dport=80, flags="S", seq=0x12340000)
    inside = headers(IPv6(src="fd01:203:405:1::2", dst=OUT) / syn)
    translated = headers(IPv6(src="2001:db8:1:1::2", dst=OUT, hlim=63) / syn)
    assert fingerprint(inside) == fingerprint(translated)


def test_two_probes_differ_by_their_sequence_number_without_an_ip_id() -> None:
    first = headers(IPv6(src=ULA, dst=OUT) / ICMPv6EchoRequest(id=7, seq=0, data=MARK))
    second = headers(IPv6(src=ULA, dst=OUT) / ICMPv6EchoRequest(id=7, seq=1, data=MARK))
    assert first.ip_id == second.ip_id == 0
    assert fingerprint(first) != fingerprint(second)


def test_an_icmpv6_error_is_the_same_packet_when_nat66_rewrites_its_quote() -> None:
    quoted = IPv6(src=HOST, dst=OUT) / TCP(sport=40000, dport=81, flags="S", seq=5)
    outside = headers(IPv6(src=OUT, dst=HOST) / ICMPv6DestUnreach(code=1) / bytes(quoted))
    restored = IPv6(src=ULA, dst=OUT, hlim=63) / TCP(sport=40000, dport=81, flags="S", seq=5)
    inside = headers(IPv6(src=OUT, dst=ULA, hlim=63) / ICMPv6DestUnreach(code=1) / bytes(restored))
    assert fingerprint(outside) == fingerprint(inside)


def test_correlate_follows_a_masqueraded_ping6_and_its_reply() -> None:
    path = ["v6a/eth0", "host/veth1", "host/br-6", "host/ft6-uplink", "ft6-outside/eth0"]
    t0 = 1_700_000_000_000_000_000
    request = [ULA, ULA, ULA, HOST, HOST]
    reply = [HOST, HOST, ULA, ULA, ULA]
    sightings = [
        Sighting(
            point,
            t0 + i * 10_000,
            headers(
                IPv6(src=src, dst=OUT, hlim=64 - (i >= 3))
                / ICMPv6EchoRequest(id=7, seq=0, data=MARK)
            ),
        )
        for i, (point, src) in enumerate(zip(path, request, strict=True))
    ]
    back = list(reversed(path))
    from scapy.layers.inet6 import ICMPv6EchoReply

    sightings += [
        Sighting(
            point,
            t0 + 100_000 + i * 10_000,
            headers(IPv6(src=OUT, dst=dst) / ICMPv6EchoReply(id=7, seq=0, data=MARK)),
        )
        for i, (point, dst) in enumerate(zip(back, reply, strict=True))
    ]
    packets = list(correlate(sightings, path))
    assert [(p.direction, len(p.sightings)) for p in packets] == [("request", 5), ("reply", 5)]
    (snat,) = packets[0].nat
    assert (snat.kind, snat.between, snat.before.ip, snat.after.ip) == (
        "SNAT",
        ("host/br-6", "host/ft6-uplink"),
        ULA,
        HOST,
    )
    (undo,) = packets[1].nat
    assert (undo.kind, undo.reverse_of, undo.before.ip, undo.after.ip) == (
        "DNAT",
        "SNAT",
        HOST,
        ULA,
    )
    assert undo.label == f"DNAT {HOST} -> {ULA} (reverses SNAT)"
