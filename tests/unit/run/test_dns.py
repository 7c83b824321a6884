"""run.dns: the rewrites around lo between the resolver's socket and Docker's embedded DNS."""

from __future__ import annotations

from flowtrace.model import Address, Headers, Sighting
from flowtrace.run.dns import answer_rewrite, query_rewrite


def _udp(src: str, sport: int, dst: str, dport: int) -> Sighting:
    return Sighting("c3/lo", 1, Headers(4, src, dst, 17, 1, 64, 40, sport, dport), True, 0)


def test_query_rewrite_is_the_output_dnat_to_dockerds_port() -> None:
    sent_to = Address("127.0.0.11", 53)
    ev = query_rewrite("c3", sent_to, _udp("127.0.0.1", 40000, "127.0.0.11", 39391), "c3/lo")
    assert ev is not None
    assert ev.kind == "DNAT" and ev.between == ("c3 socket", "c3/lo")
    assert (ev.before, ev.after) == (sent_to, Address("127.0.0.11", 39391))
    same = _udp("127.0.0.1", 40000, "127.0.0.11", 53)
    assert query_rewrite("c3", sent_to, same, "c3/lo") is None


def test_answer_rewrite_reverses_the_query_dnat() -> None:
    server = Address("127.0.0.11", 39391)
    ev = answer_rewrite("c3", server, _udp("127.0.0.11", 53, "127.0.0.1", 40000), "c3/lo")
    assert ev is not None
    assert ev.kind == "SNAT" and ev.reverse_of == "DNAT"
    assert (ev.before, ev.after) == (server, Address("127.0.0.11", 53))
    untouched = _udp("127.0.0.11", 39391, "127.0.0.1", 40000)
    assert answer_rewrite("c3", server, untouched, "c3/lo") is None
