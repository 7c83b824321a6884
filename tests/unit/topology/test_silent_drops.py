"""The verdict's words for drops no rule made, from the kernel's state."""

from __future__ import annotations

import errno

from flowtrace.topology.kernel import RTN_BLACKHOLE, RTN_UNREACHABLE
from flowtrace.topology.silent_drops import NUD_FAILED, SilentFacts, describe

BASE = SilentFacts("router", "10.252.1.2", "10.252.2.2", "r0", rp_filter=1, rp_filter_all=0)


def test_the_reverse_path_filter() -> None:
    text = describe(SilentFacts(**{**BASE.__dict__, "route_error": errno.EINVAL}))
    assert text is not None
    assert text.startswith("dropped in router, by no rule: the reverse-path filter refused it")
    assert "net.ipv4.conf.r0.rp_filter = 1, all = 0" in text
    assert "there is no route back to 10.252.1.2" in text
    other_way = SilentFacts(**{**BASE.__dict__, "route_error": errno.EINVAL, "back_iface": "r1"})
    assert "the route back to 10.252.1.2 leaves by r1" in (describe(other_way) or "")
    assert "1 is strict" in (describe(other_way) or "")
    loose = SilentFacts(**{**BASE.__dict__, "route_error": errno.EXDEV, "rp_filter": 0})
    assert "martian source" in (describe(loose) or "")


def test_the_same_refusal_from_a_blackhole_or_a_source_the_filter_accepts() -> None:
    """The input lookup refuses a blackhole route with EINVAL, as it refuses rp_filter."""
    hole = SilentFacts(
        **{**BASE.__dict__, "route_error": errno.EINVAL, "table_kind": RTN_BLACKHOLE}
    )
    assert "is a blackhole route, which drops silently" in (describe(hole) or "")
    same_way = SilentFacts(**{**BASE.__dict__, "route_error": errno.EINVAL, "back_iface": "r0"})
    assert "martian source" in (describe(same_way) or "")  # strict, and the way back is r0
    loose = {"rp_filter": 2, "route_error": errno.EINVAL}
    assert "martian" in (
        describe(SilentFacts(**{**BASE.__dict__, **loose, "back_iface": "r1"})) or ""
    )
    refused = describe(SilentFacts(**{**BASE.__dict__, **loose}))
    assert refused is not None and "2 is loose: some way back must exist" in refused


def test_forwarding_off_and_no_route() -> None:
    off = SilentFacts(**{**BASE.__dict__, "route_error": errno.EHOSTUNREACH, "forwarding": 0})
    assert "forwarding is off on r0" in (describe(off) or "")
    none = SilentFacts(**{**BASE.__dict__, "route_error": errno.ENETUNREACH, "forwarding": 1})
    assert "no route to 10.252.2.2" in (describe(none) or "")


def test_route_types_and_a_silent_neighbour() -> None:
    hole = SilentFacts(**{**BASE.__dict__, "route_kind": RTN_BLACKHOLE})
    assert "blackhole" in (describe(hole) or "")
    unreachable = SilentFacts(**{**BASE.__dict__, "route_kind": RTN_UNREACHABLE})
    assert "type unreachable" in (describe(unreachable) or "")
    arp = SilentFacts(
        **{**BASE.__dict__, "route_kind": 1, "out_iface": "r1", "next_hop": "10.252.2.2",
           "neighbour_state": NUD_FAILED}
    )  # fmt: skip
    assert "the next hop 10.252.2.2 on r1 does not answer ARP" in (describe(arp) or "")
    assert describe(SilentFacts(**{**BASE.__dict__, "route_kind": 1})) is None
