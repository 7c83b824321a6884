"""HopStats: exact count/min/max/mean, quantiles within 1%, memory independent of samples."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtrace.correlate.stats import (
    SUB_BUCKETS,
    HopStats,
    bucket_bounds,
    bucket_index,
    hop_stats,
)
from flowtrace.model import Headers, Packet, Sighting


def nearest_rank(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@given(st.integers(min_value=0, max_value=2**63))
def test_every_value_lies_in_its_bucket(value: int) -> None:
    low, high = bucket_bounds(bucket_index(value))
    assert low <= value <= high
    assert high - low <= max(1, low // SUB_BUCKETS)


def test_buckets_tile_the_line_without_gaps() -> None:
    previous_high = -1
    for index in range(40 * SUB_BUCKETS):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1
        assert bucket_index(low) == index == bucket_index(high)
        previous_high = high


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=10**10), min_size=1, max_size=300),
    st.sampled_from([0.01, 0.25, 0.5, 0.9, 0.99, 0.999]),
)
def test_quantiles_are_within_one_percent(values: list[int], q: float) -> None:
    stats = HopStats()
    for v in values:
        stats.add(v)
    exact = nearest_rank(values, q)
    got = stats.quantile(q)
    assert got is not None
    assert abs(got - exact) <= exact * 0.01
    assert stats.count == len(values)
    assert (stats.min, stats.max) == (min(values), max(values))


def test_summary_of_known_samples() -> None:
    stats = HopStats()
    for v in range(1, 1001):  # 1..1000 ns
        stats.add(v * 1000)
    summary = stats.summary()
    assert summary["count"] == 1000
    assert summary["min_ns"] == 1000 and summary["max_ns"] == 1_000_000
    assert summary["mean_ns"] == 500_500
    assert abs(summary["median_ns"] - 500_000) <= 5_000  # type: ignore[operator]
    assert abs(summary["p99_ns"] - 990_000) <= 9_900  # type: ignore[operator]


def test_empty_summary_and_bad_input() -> None:
    assert HopStats().summary() == {
        "count": 0,
        "min_ns": None,
        "median_ns": None,
        "p99_ns": None,
        "max_ns": None,
        "mean_ns": None,
    }
    with pytest.raises(ValueError):
        HopStats().add(-1)
    with pytest.raises(ValueError):
        HopStats().quantile(1.5)


def test_memory_does_not_grow_with_samples() -> None:
    stats = HopStats()
    rng = random.Random(1)
    for _ in range(200_000):
        stats.add(int(rng.lognormvariate(10, 3)))  # ns .. minutes
    assert stats.count == 200_000
    assert len(stats.buckets) < 64 * SUB_BUCKETS  # the most a 64-bit range can need
    before = len(stats.buckets)
    for _ in range(100_000):
        stats.add(int(rng.lognormvariate(10, 3)))
    assert len(stats.buckets) < before * 1.1


def test_merge_equals_adding_everything_to_one() -> None:
    rng = random.Random(2)
    left_values = [rng.randrange(10**6) for _ in range(500)]
    right_values = [rng.randrange(10**9) for _ in range(700)]
    left, right, both = HopStats(), HopStats(), HopStats()
    for v in left_values:
        left.add(v)
        both.add(v)
    for v in right_values:
        right.add(v)
        both.add(v)
    assert left.merge(right) is left
    assert left == both
    assert left.merge(HopStats()).summary() == both.summary()
    assert HopStats().merge(both).summary() == both.summary()


def packet(packet_id: int, direction: str, times: list[int], points: list[str]) -> Packet:
    h = Headers(4, "10.0.0.1", "10.0.0.2", 1, packet_id, 64, 84)
    return Packet(
        packet_id,
        direction,  # type: ignore[arg-type]
        tuple(Sighting(p, t, h) for p, t in zip(points, times, strict=True)),
    )


def test_hop_stats_groups_by_hop_and_direction() -> None:
    path = ["c1/eth0", "host/veth1", "host/docker0"]
    packets = [
        packet(1, "request", [0, 10_000, 25_000], path),
        packet(2, "reply", [100_000, 108_000, 130_000], path[::-1]),
        packet(3, "request", [200_000, 212_000, 220_000], path),
        packet(4, "request", [300_000], path[:1]),  # seen once: no hop
    ]
    stats = hop_stats(packets)
    assert set(stats) == {
        ("c1/eth0", "host/veth1", "request"),
        ("host/veth1", "host/docker0", "request"),
        ("host/docker0", "host/veth1", "reply"),
        ("host/veth1", "c1/eth0", "reply"),
    }
    first_hop = stats[("c1/eth0", "host/veth1", "request")]
    assert (first_hop.count, first_hop.min, first_hop.max) == (2, 10_000, 12_000)
    assert stats[("host/veth1", "c1/eth0", "reply")].summary()["max_ns"] == 22_000


def test_median_is_statistics_median() -> None:
    import statistics

    from flowtrace.correlate.stats import median

    for values in ([5], [3, 1], [9, 2, 7], [4, 4, 1, 8], [2.5, 1.0, 7.25, 3.0, 3.0]):
        assert median(values) == statistics.median(values)
    with pytest.raises(ValueError):
        median([])
