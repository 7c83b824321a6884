"""The C grouper (_grouper.c) groups every stream exactly as match._Grouper does.

Streams are generated with what makes grouping hard: several points, sightings out
of time order (the late heap, a growing hold), packets alike but for their IP id,
the same packet twice at one point (loopback, hairpin, retransmission), ICMP errors
(whose fingerprint quotes another packet), gaps longer than the window, paths whose
every point completes a packet.  Both are fed the same batches; what each hands back
and holds after every batch must be equal, and so must the Correlator's packets.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtrace import native
from flowtrace.correlate import match
from flowtrace.correlate.fingerprint import NAT_PROOF_FIELDS, fingerprint
from flowtrace.correlate.match import INITIAL_HOLD_NS, Correlator
from flowtrace.model import Headers, Packet, Sighting

NATIVE = native.load("flowtrace.correlate._grouper")
pytestmark = pytest.mark.skipif(NATIVE is None, reason="the C grouper is not built here")

POINTS = ["c1/eth0", "host/veth1", "host/docker0", "host/eth0", "ext/eth0"]
T0 = 1_700_000_000_000_000_000
WINDOW = 1_000_000_000

TEMPLATES = [
    Headers(4, "172.17.0.2", "203.0.113.2", 1, 7, 64, 84, icmp_type=8, icmp_id=3, icmp_seq=1),
    Headers(4, "203.0.113.2", "172.17.0.2", 1, 8, 64, 84, icmp_type=0, icmp_id=3, icmp_seq=1),
    Headers(4, "172.17.0.2", "203.0.113.2", 6, 9, 64, 60, 4000, 80, tcp_flags=0x02),
    Headers(4, "203.0.113.2", "172.17.0.2", 6, 0, 64, 60, 80, 4000, tcp_flags=0x12),
    Headers(4, "10.0.0.1", "10.0.0.2", 17, 3, 64, 40, 5353, 53, payload_digest=b"\x12\x34"),
    # An ICMP error quoting the UDP datagram above: its fingerprint includes the quote's.
    Headers(
        4, "10.0.0.2", "10.0.0.1", 1, 11, 64, 68, icmp_type=3, icmp_code=3,
        inner=Headers(4, "10.0.0.1", "10.0.0.2", 17, 3, 63, 40, 5353, 53),
    ),
]  # fmt: skip

streams = st.lists(
    st.tuples(
        st.integers(0, len(TEMPLATES) - 1),  # which packet
        st.integers(0, 6),  # IP id offset: packets alike but for it
        st.integers(0, len(POINTS) - 1),  # where
        # When: out of order, beyond the window, and often on a coarse grid, so that
        # times tie (heap tie-breaks) and fall exactly on the window's edge.
        st.one_of(
            st.integers(-50_000_000, 3_000_000_000),
            st.integers(-2, 60).map(lambda step: step * 50_000_000),
        ),
        st.sampled_from([None, True, False]),
    ),
    max_size=80,
)


def stream_of(spec: list[tuple[int, int, int, int, bool | None]]) -> list[Sighting]:
    return [
        Sighting(POINTS[point], T0 + t, TEMPLATES[k]._replace(ip_id=offset), outbound, i)
        for i, (k, offset, point, t, outbound) in enumerate(spec)
    ]


def python_grouper(complete_at: int, window: int = WINDOW) -> match._Grouper:
    return match._Grouper(window, INITIAL_HOLD_NS, complete_at, fingerprint, match._seen_again)


def c_grouper(complete_at: int, window: int = WINDOW) -> match._Grouper:
    assert NATIVE is not None
    grouper: match._Grouper = NATIVE.Grouper(
        window, INITIAL_HOLD_NS, complete_at, fingerprint, match._seen_again,
        NAT_PROOF_FIELDS, Headers._fields.index("inner"),
    )  # fmt: skip
    return grouper


def run(grouper: match._Grouper, stream: list[Sighting], batch: int) -> list[object]:
    """Everything the grouper hands back and holds, batch by batch."""
    seen: list[object] = []
    for start in range(0, len(stream), batch):
        seen.append(grouper.add_many(stream[start : start + batch]))
        seen.append(grouper.held)
    seen.append(grouper.finish())
    seen.append(grouper.held)
    return seen


@settings(max_examples=300, deadline=None)
@given(
    streams,
    st.integers(1, 17),
    st.sampled_from([0, 2, 3, len(POINTS)]),
    st.sampled_from([WINDOW, 100_000_000, 30_000_000, 3]),
)
def test_generated_streams_group_the_same(
    spec: list[tuple[int, int, int, int, bool | None]], batch: int, complete_at: int, window: int
) -> None:
    stream = stream_of(spec)
    expected = run(python_grouper(complete_at, window), stream, batch)
    assert run(c_grouper(complete_at, window), stream, batch) == expected


def packets_with(
    grouper: Callable[[int, int], match._Grouper],
    stream: list[Sighting],
    monkeypatch: pytest.MonkeyPatch,
) -> list[Packet]:
    monkeypatch.setattr(match, "_new_grouper", grouper)
    correlator = Correlator(POINTS, window_ns=WINDOW)
    got = correlator.add_many(stream) + correlator.finish()
    monkeypatch.undo()
    return got


@settings(max_examples=100, deadline=None)
@given(streams)
def test_the_correlator_makes_the_same_packets_with_either(
    spec: list[tuple[int, int, int, int, bool | None]],
) -> None:
    stream = stream_of(spec)
    with pytest.MonkeyPatch.context() as patch:
        expected = packets_with(python_grouper, stream, patch)
        assert packets_with(c_grouper, stream, patch) == expected


def test_the_correlator_uses_the_c_grouper_where_it_is_built() -> None:
    assert type(Correlator(POINTS)._grouper).__module__ == "flowtrace.correlate._grouper"


def test_a_time_beyond_64_bits_is_refused_with_its_reason() -> None:
    grouper = c_grouper(0)
    with pytest.raises(OverflowError, match="beyond the year 2262"):
        grouper.add_many([Sighting("a", 1 << 64, TEMPLATES[0])])


def test_times_at_both_ends_of_64_bits_group_as_in_python() -> None:
    """Differences of times near the ends overflow int64: the C code computes them wider."""
    stream = [
        Sighting("a", -(1 << 63), TEMPLATES[0]),
        Sighting("b", (1 << 63) - 1, TEMPLATES[0]),
        Sighting("a", 0, TEMPLATES[1]),
        Sighting("b", -(1 << 63) + 5, TEMPLATES[1]),
    ]
    for batch in (1, 4):
        assert run(c_grouper(2), stream, batch) == run(python_grouper(2), stream, batch)


def test_not_a_sighting_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="Sightings"):
        c_grouper(0).add_many([("a", 1)])


def test_the_hold_grows_to_twice_the_lateness_seen_as_in_python() -> None:
    """A sighting 100 ms late makes the hold 200 ms (not the most, half the window), which
    decides when the first packet is handed back."""
    ms = 1_000_000
    stream = [
        Sighting("a", T0, TEMPLATES[0]),
        Sighting("b", T0 + ms, TEMPLATES[0]),
        Sighting("a", T0 + 200 * ms, TEMPLATES[1]),
        Sighting("b", T0 + 100 * ms, TEMPLATES[2]),  # 100 ms late
        Sighting("a", T0 + 350 * ms, TEMPLATES[3]),
    ]
    expected = run(python_grouper(2), stream, 1)
    assert [len(part) if isinstance(part, list) else part for part in expected] == [
        0, 1, 0, 2, 0, 3, 0, 4, 1, 3, 3, 0,
    ]  # fmt: skip
    assert run(c_grouper(2), stream, 1) == expected
