"""The clock-offset estimator on exchanges made up with a known skew: the offset found is
within its own bound of the truth, whatever the delays, and the shortest round trip wins."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtrace.correlate.clocks import (
    MIN_EXCHANGES,
    SAME_CLOCK,
    ClockOffset,
    combined_error,
    estimate,
    exchange_offset,
)

T0 = 1_796_000_000_000_000_000  # ns since the epoch, like a kernel stamp


def exchange(skew: int, sent: int, out: int, back: int, work: int = 3_000) -> tuple[int, ...]:
    """t1..t4 of one exchange: the agent's clock runs `skew` ns ahead of the controller's;
    the request takes `out` ns to arrive, the answer `back` ns, the agent `work` ns."""
    t1 = sent
    t2 = sent + out + skew
    t3 = t2 + work
    t4 = sent + out + work + back
    return (t1, t2, t3, t4)


def test_symmetric_delays_give_the_skew_exactly() -> None:
    for skew in (0, 5_000_000, -2_500_000, 123):
        samples = [exchange(skew, T0 + i * 1_000_000, 40_000, 40_000) for i in range(12)]
        found = estimate(samples)
        assert found.offset_ns == skew
        assert found.round_trip_ns == 80_000
        assert found.error_ns == 40_000


def test_the_shortest_round_trip_is_kept() -> None:
    skew = 7_000_000
    rng = random.Random(4)
    samples = [
        exchange(skew, T0 + i * 500_000, rng.randint(60_000, 400_000), rng.randint(60_000, 400_000))
        for i in range(20)
    ]
    samples.append(exchange(skew, T0 + 99_000_000, 21_000, 29_000))  # the quickest by far
    found = estimate(samples)
    assert found.round_trip_ns == 50_000
    assert found.offset_ns == skew + (21_000 - 29_000) // 2
    assert abs(found.offset_ns - skew) <= found.error_ns
    assert found.exchanges == 21


@settings(max_examples=300, deadline=None)
@given(
    skew=st.integers(-(10**10), 10**10),
    delays=st.lists(
        st.tuples(st.integers(1, 5_000_000), st.integers(1, 5_000_000), st.integers(0, 50_000)),
        min_size=MIN_EXCHANGES,
        max_size=40,
    ),
)
def test_the_truth_is_within_the_bound_however_unequal_the_ways(
    skew: int, delays: list[tuple[int, int, int]]
) -> None:
    samples = [
        exchange(skew, T0 + i * 10**7, out, back, work)
        for i, (out, back, work) in enumerate(delays)
    ]
    found = estimate(samples)
    assert abs(found.offset_ns - skew) <= found.error_ns
    assert found.error_ns <= min(out + back for out, back, _ in delays) // 2 + 1


def test_a_time_on_the_host_is_put_on_the_controllers_clock() -> None:
    offset = ClockOffset(5_000_000, 40_000, 80_000, 32)
    assert offset.to_controller(T0 + 5_000_000) == T0
    assert offset.label == "+5000.0 µs ± 40.0 µs"
    assert offset.as_dict() == {
        "offset_ns": 5_000_000,
        "error_ns": 40_000,
        "round_trip_ns": 80_000,
        "exchanges": 32,
    }
    assert SAME_CLOCK.to_controller(T0) == T0


def test_bounds_of_two_hosts_add_up() -> None:
    assert combined_error(ClockOffset(0, 40, 80, 10), ClockOffset(9, 25, 50, 10)) == 65
    assert combined_error(SAME_CLOCK, ClockOffset(0, 25, 50, 10)) == 25


def test_too_few_exchanges_or_one_that_runs_backwards_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 10"):
        estimate([exchange(0, T0 + i, 10, 10) for i in range(MIN_EXCHANGES - 1)])
    broken = [exchange(0, T0 + i * 1000, 10, 10) for i in range(MIN_EXCHANGES)]
    broken[3] = (T0 + 10, T0 + 20, T0 + 30, T0 + 5)  # answered before it was asked
    with pytest.raises(ValueError, match="backwards"):
        estimate(broken)


def test_one_exchange_by_the_formula() -> None:
    assert exchange_offset(100, 1_150, 1_160, 220) == (995, 110)
