"""NAT diffs between neighbouring sightings, and replies that undo them."""

from __future__ import annotations

from dataclasses import replace

from flowtrace.correlate.nat import annotate_reverse, mark_reverse, nat_ends, nat_events, undoes
from flowtrace.model import Address, Headers, NatEvent, Packet, Sighting


def tcp(src: str, sport: int, dst: str, dport: int) -> Headers:
    return Headers(4, src, dst, 6, 1, 64, 40, sport, dport, tcp_seq=1, tcp_ack=0, tcp_flags=2)


def echo(src: str, dst: str, ident: int, icmp_type: int = 8) -> Headers:
    return Headers(
        4, src, dst, 1, 1, 64, 84, icmp_type=icmp_type, icmp_code=0, icmp_id=ident, icmp_seq=1
    )


def seen(*hops: tuple[str, Headers]) -> list[Sighting]:
    return [Sighting(point, 1000 * i, h) for i, (point, h) in enumerate(hops)]


def test_no_rewrite_no_event() -> None:
    h = tcp("172.17.0.2", 40000, "172.17.0.3", 80)
    assert nat_events(seen(("c1/eth0", h), ("host/docker0", h), ("c2/eth0", h)), "request") == ()
    assert nat_events(seen(("c1/eth0", h)), "request") == ()


def test_source_change_is_snat_between_the_two_points() -> None:
    before = tcp("172.17.0.2", 40000, "203.0.113.2", 80)
    after = tcp("198.51.100.1", 40000, "203.0.113.2", 80)
    events = nat_events(
        seen(("c1/eth0", before), ("host/docker0", before), ("host/eth0", after), ("ext", after)),
        "request",
    )
    assert events == (
        NatEvent(
            "SNAT",
            ("host/docker0", "host/eth0"),
            Address("172.17.0.2", 40000),
            Address("198.51.100.1", 40000),
        ),
    )


def test_a_port_change_alone_is_a_rewrite() -> None:
    before = tcp("172.17.0.2", 40000, "203.0.113.2", 80)
    after = tcp("172.17.0.2", 40001, "203.0.113.2", 80)
    (event,) = nat_events(seen(("a", before), ("b", after)), "request")
    assert (event.kind, event.before.port, event.after.port) == ("SNAT", 40000, 40001)


def test_both_sides_rewritten_between_the_same_points_gives_two_events() -> None:
    before = tcp("203.0.113.2", 5555, "198.51.100.1", 8080)
    after = tcp("172.17.0.1", 5555, "172.17.0.4", 80)
    events = nat_events(seen(("host/eth0", before), ("host/docker0", after)), "request")
    assert [(e.kind, str(e.before), str(e.after)) for e in events] == [
        ("SNAT", "203.0.113.2:5555", "172.17.0.1:5555"),
        ("DNAT", "198.51.100.1:8080", "172.17.0.4:80"),
    ]
    assert all(e.between == ("host/eth0", "host/docker0") for e in events)


def test_icmp_echo_id_is_the_port_on_the_requesters_side() -> None:
    assert nat_ends(echo("172.17.0.2", "203.0.113.2", 7), "request") == (
        "172.17.0.2",
        7,
        "203.0.113.2",
        None,
    )
    assert nat_ends(echo("203.0.113.2", "172.17.0.2", 7, 0), "reply") == (
        "203.0.113.2",
        None,
        "172.17.0.2",
        7,
    )
    request = nat_events(
        seen(
            ("host/docker0", echo("172.17.0.2", "203.0.113.2", 7)),
            ("host/eth0", echo("198.51.100.1", "203.0.113.2", 1)),
        ),
        "request",
    )
    assert [(e.kind, str(e.before), str(e.after)) for e in request] == [
        ("SNAT", "172.17.0.2:7", "198.51.100.1:1")
    ]
    reply = nat_events(
        seen(
            ("host/eth0", echo("203.0.113.2", "198.51.100.1", 1, 0)),
            ("host/docker0", echo("203.0.113.2", "172.17.0.2", 7, 0)),
        ),
        "reply",
    )
    assert [(e.kind, str(e.before), str(e.after)) for e in reply] == [
        ("DNAT", "198.51.100.1:1", "172.17.0.2:7")
    ]
    assert undoes(reply[0], request[0])
    assert mark_reverse(reply, request)[0].reverse_of == "SNAT"


def test_rewrites_over_several_hops_are_each_reported_once() -> None:
    a = tcp("10.0.0.2", 1000, "203.0.113.9", 80)
    b = tcp("10.1.0.2", 1000, "203.0.113.9", 80)  # first NAT
    c = tcp("198.51.100.1", 2000, "203.0.113.9", 80)  # second NAT
    events = nat_events(seen(("p1", a), ("p2", b), ("p3", b), ("p4", c)), "request")
    assert [(e.between, str(e.after)) for e in events] == [
        (("p1", "p2"), "10.1.0.2:1000"),
        (("p3", "p4"), "198.51.100.1:2000"),
    ]


def test_reply_to_a_published_port_undoes_the_dnat() -> None:
    dnat = NatEvent(
        "DNAT",
        ("host/eth0", "host/docker0"),
        Address("198.51.100.1", 8080),
        Address("172.17.0.4", 80),
    )
    put_back = NatEvent(
        "SNAT",
        ("host/docker0", "host/eth0"),
        Address("172.17.0.4", 80),
        Address("198.51.100.1", 8080),
    )
    unrelated = NatEvent(
        "SNAT",
        ("host/docker0", "host/eth0"),
        Address("172.17.0.5", 80),
        Address("198.51.100.1", 8080),
    )
    request = Packet(1, "request", (), (dnat,))
    reply = Packet(2, "reply", (), (put_back, unrelated))
    marked = annotate_reverse(request, reply)
    assert [e.reverse_of for e in marked.nat] == ["DNAT", None]
    assert marked.packet_id == 2 and marked.direction == "reply"
    assert annotate_reverse(replace(request, nat=()), reply) is reply


def test_same_kind_is_not_an_undo() -> None:
    snat = NatEvent("SNAT", ("a", "b"), Address("10.0.0.1", 1), Address("10.0.0.2", 1))
    mirror = NatEvent("SNAT", ("b", "a"), Address("10.0.0.2", 1), Address("10.0.0.1", 1))
    assert not undoes(mirror, snat)


def test_an_icmp_error_without_ports_still_undoes_a_masquerade() -> None:
    masquerade = NatEvent(
        "SNAT", ("host/docker0", "host/eth0"), Address("172.17.0.2", 7), Address("198.51.100.1", 7)
    )
    error_put_back = NatEvent(
        "DNAT", ("host/eth0", "host/docker0"), Address("198.51.100.1"), Address("172.17.0.2")
    )
    assert undoes(error_put_back, masquerade)
