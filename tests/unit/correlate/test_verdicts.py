"""correlate.verdicts: a probe's verdict from its packets, and verdicts as records."""

from __future__ import annotations

import pytest

from flowtrace.correlate.verdicts import (
    NeighborSeen,
    NoExplainer,
    ProbeFacts,
    blocked_verdict,
    decide,
    verdict_from_record,
    verdict_record,
)
from flowtrace.model import DropReason, Headers, Packet, Sighting, Verdict


@pytest.mark.parametrize(
    "verdict",
    [
        Verdict(0, "replied", None, "echo reply", 120_000),
        Verdict(3, "refused", None, "RST from 172.17.0.6: the port is closed", 90_000),
        Verdict(1, "unreachable", None, "destination unreachable (code 3) from 10.0.0.1", 5),
        Verdict(2, "lost", "host/docker0", "no sighting after host/docker0"),
        Verdict(4, "lost", None, "not seen leaving the source"),
        Verdict(5, "delivered", None, "no answer came back"),
        Verdict(6, "replied"),
    ],
    ids=lambda v: str(v),
)
def test_verdict_text_reads_back(verdict: Verdict) -> None:
    assert verdict_from_record(verdict.probe, str(verdict), verdict.rtt_ns) == verdict


def test_verdict_text_that_is_no_verdict_is_ignored() -> None:
    assert verdict_from_record(0, "exploded") is None
    assert verdict_from_record(0, "lost", rtt_ns=7) == Verdict(0, "lost")  # no round trip


# --- records (manifest schema 2) and schema 1's text -----------------------------------------


def test_a_record_reads_back_as_the_same_verdict() -> None:
    dropped = Verdict(
        2,
        "lost",
        "host/docker0",
        "dropped in host by `-A DOCKER-ISOLATION-STAGE-2 -o br-1 -j DROP`, filter chain FORWARD",
        rule="-A DOCKER-ISOLATION-STAGE-2 -o br-1 -j DROP",
    )
    replied = Verdict(0, "replied", None, "echo reply", 120_000)
    for verdict in (dropped, replied):
        record = verdict_record(verdict)
        assert record["text"] == str(verdict)
        assert verdict_from_record(verdict.probe, record) == verdict


def test_a_record_takes_the_measured_round_trip_only_where_it_has_none() -> None:
    record = verdict_record(Verdict(0, "replied", None, "echo reply"))
    assert verdict_from_record(0, record, rtt_ns=55) == Verdict(
        0, "replied", None, "echo reply", 55
    )
    lost = verdict_record(Verdict(1, "lost", "c1/eth0", "no sighting after c1/eth0"))
    assert verdict_from_record(1, lost, rtt_ns=55).rtt_ns is None  # type: ignore[union-attr]


def test_records_of_a_wrong_shape_are_no_verdicts() -> None:
    assert verdict_from_record(0, {"outcome": "exploded"}) is None
    assert verdict_from_record(0, 42) is None
    odd = verdict_from_record(0, {"outcome": "lost", "last_point": 7, "detail": None, "rule": []})
    assert odd == Verdict(0, "lost")


def test_schema_1_text_gives_back_the_rule_it_quotes() -> None:
    text = (
        "lost after host/docker0 (dropped in host by `-A DOCKER-ISOLATION-STAGE-2 -o br-1 -j DROP`"
        ", filter chain FORWARD from docker0 to br-1: Docker isolates its bridge networks)"
    )
    verdict = verdict_from_record(0, text)
    assert verdict is not None and verdict.last_point == "host/docker0"
    assert verdict.rule == "-A DOCKER-ISOLATION-STAGE-2 -o br-1 -j DROP"


# --- deciding ---------------------------------------------------------------------------------

POINTS = ("c1/eth0", "host/veth1", "host/docker0", "host/veth2", "c2/eth0")
FACTS = ProbeFacts("c1/eth0", "c2/eth0", "icmp", points=POINTS, src_label="c1")


def echo(kind: int, at: list[str], t0: int = 0, probe: int | None = 0) -> Packet:
    h = Headers(4, "172.17.0.2", "172.17.0.3", 1, 7, 64, 60, icmp_type=kind, icmp_id=9,
                icmp_seq=0)  # fmt: skip
    sightings = tuple(Sighting(p, t0 + i * 1000, h) for i, p in enumerate(at))
    return Packet(1, "request" if kind == 8 else "reply", sightings, probe=probe)


class Dropping:
    """An explainer that knows one rule, as topology.drops would find it."""

    def lost(self, last: Sighting) -> DropReason | None:
        return DropReason("-P FORWARD DROP", f"dropped in host after {last.point}")

    def unanswered(self, arrived: Sighting) -> DropReason | None:
        return None

    def unresolved(self, point: str, sender: str, target: str) -> DropReason | None:
        return DropReason("-A INPUT -p ipv6-icmp -j DROP", f"dropped at {point} ({sender})")


def test_a_reply_back_at_the_source_is_replied_with_its_round_trip() -> None:
    packets = [echo(8, list(POINTS)), echo(0, list(reversed(POINTS)), t0=50_000)]
    verdict = decide(0, packets, FACTS, NoExplainer())
    assert verdict == Verdict(0, "replied", None, "echo reply", 54_000)


def test_a_request_that_stops_is_lost_there_with_the_explainers_rule() -> None:
    packets = [echo(8, list(POINTS[:3]))]
    assert decide(0, packets, FACTS, NoExplainer()) == Verdict(
        0, "lost", "host/docker0", "no sighting after host/docker0"
    )
    verdict = decide(0, packets, FACTS, Dropping())
    assert verdict.rule == "-P FORWARD DROP" and verdict.last_point == "host/docker0"


def test_delivered_without_answer_and_nothing_seen() -> None:
    assert decide(0, [echo(8, list(POINTS))], FACTS, NoExplainer()).outcome == "delivered"
    assert decide(0, [], FACTS, NoExplainer()) == Verdict(
        0, "lost", None, "not seen leaving the source"
    )
    other = [echo(8, list(POINTS), probe=1)]
    assert decide(0, other, FACTS, NoExplainer()).detail == "not seen leaving the source"


def test_an_unanswered_arp_is_counted_where_it_was_seen_in_path_order() -> None:
    facts = ProbeFacts(
        "m1/eth0", None, "icmp", src_label="m1", blocked_neighbor="198.51.100.65",
        blocked_why="macvlan isolation", points=("m1/eth0", "host/ft-l2a"),
    )  # fmt: skip
    arp = [NeighborSeen("host/ft-l2a", 1, "198.51.100.66", "198.51.100.65")] + [
        NeighborSeen("m1/eth0", 1, "198.51.100.66", "198.51.100.65")
    ] * 3
    verdict = blocked_verdict(0, facts, arp)
    assert verdict is not None and verdict.last_point == "host/ft-l2a"
    assert "(3 sent, seen at m1/eth0 and host/ft-l2a)" in verdict.detail
    answered = [*arp, NeighborSeen("host/ft-l2a", 2, "198.51.100.65", "198.51.100.66")]
    assert blocked_verdict(0, facts, answered) is None


# --- IPv6: ICMPv6 answers, neighbour discovery ------------------------------------------------

V6_POINTS = ("v6a/eth0", "host/veth1", "host/br-6", "host/veth2", "v6b/eth0")
V6_FACTS = ProbeFacts(
    "v6a/eth0", "v6b/eth0", "udp", dst_port=9, points=V6_POINTS, src_label="v6a",
    first_hop="fd6c:6162:3600::3", first_hop_owner="v6b",
)  # fmt: skip


def six(at: list[str], icmp_type: int | None, code: int = 0, t0: int = 0) -> Packet:
    h = Headers(6, "fd6c:6162:3600::2", "fd6c:6162:3600::3", 58, 0, 64, 80, icmp_type=icmp_type,
                icmp_code=code, icmp_id=9, icmp_seq=0)  # fmt: skip
    direction = "request" if icmp_type == 128 else "reply"
    return Packet(1, direction, tuple(Sighting(p, t0 + i, h) for i, p in enumerate(at)), probe=0)


@pytest.mark.parametrize(
    ("icmp_type", "code", "outcome", "words"),
    [
        (129, 0, "replied", "echo reply"),
        (
            1,
            4,
            "refused",
            "ICMPv6 port unreachable from fd6c:6162:3600::2: nothing listens on 9/udp",
        ),
        (1, 3, "unreachable", "ICMPv6 address unreachable (no neighbour answered) (type 1 code 3)"),
        (1, 1, "unreachable", "communication administratively prohibited (a REJECT rule)"),
        (3, 0, "unreachable", "ICMPv6 time exceeded (type 3 code 0)"),
    ],
)
def test_icmpv6_answers(icmp_type: int, code: int, outcome: str, words: str) -> None:
    packets = [six(list(V6_POINTS), 128), six(list(reversed(V6_POINTS)), icmp_type, code, 100)]
    verdict = decide(0, packets, V6_FACTS, NoExplainer())
    assert verdict.outcome == outcome and words in verdict.detail


def solicitations(points: tuple[str, ...], times: int) -> list[NeighborSeen]:
    ask = [NeighborSeen(p, 1, "fd6c:6162:3600::2", "fd6c:6162:3600::3", True) for p in points]
    return ask * times


def test_a_neighbour_that_never_answers_holds_the_probe_back_and_is_explained() -> None:
    verdict = decide(0, [], V6_FACTS, Dropping(), solicitations(V6_POINTS, 3))
    assert verdict.outcome == "lost" and verdict.last_point == "v6b/eth0"
    assert verdict.detail.startswith(
        "never left v6a: its neighbour solicitations for fd6c:6162:3600::3 (3 sent, seen at "
        "v6a/eth0, host/veth1, host/br-6, host/veth2 and v6b/eth0) got no neighbour advertisement: "
        "dropped at v6b/eth0 (fd6c:6162:3600::2)"
    )
    assert verdict.rule == "-A INPUT -p ipv6-icmp -j DROP"
    unexplained = decide(0, [], V6_FACTS, NoExplainer(), solicitations(V6_POINTS, 1))
    assert "they reached v6b/eth0 and v6b sent no neighbour advertisement" in unexplained.detail
    short = decide(0, [], V6_FACTS, NoExplainer(), solicitations(V6_POINTS[:3], 2))
    assert short.detail.endswith("got no neighbour advertisement: they never reached v6b, which "
                                 "owns fd6c:6162:3600::3")  # fmt: skip


def test_an_answered_solicitation_or_none_at_all_is_no_neighbour_verdict() -> None:
    answered = [
        *solicitations(V6_POINTS, 1),
        NeighborSeen("v6a/eth0", 2, "fd6c:6162:3600::3", "fd6c:6162:3600::3", True),
    ]
    assert decide(0, [], V6_FACTS, Dropping(), answered).detail == "not seen leaving the source"
    assert decide(0, [], V6_FACTS, Dropping(), []).detail == "not seen leaving the source"


def test_a_blocked_ipv6_path_shows_its_neighbour_solicitations() -> None:
    facts = ProbeFacts(
        "m1/eth0", None, "icmp", src_label="m1", blocked_neighbor="2001:db8:64::65",
        blocked_why="macvlan isolation", points=("m1/eth0", "host/ft-l2a"),
    )  # fmt: skip
    asked = [NeighborSeen("m1/eth0", 1, "2001:db8:64::67", "2001:db8:64::65", True)] * 2
    verdict = blocked_verdict(0, facts, asked)
    assert verdict is not None
    assert "its neighbour solicitation for 2001:db8:64::65 (2 sent, seen at m1/eth0)" in (
        verdict.detail
    )
    # an advertisement names the address it is about as its target, whoever sends it
    told = NeighborSeen("m1/eth0", 2, "fe80::1", "2001:db8:64::65", True)
    assert blocked_verdict(0, facts, [*asked, told]) is None
