"""Per-hop latency statistics in constant memory, for captures of any length.

HopStats keeps count, sum, min and max exactly and the distribution in a log-linear
histogram (the HDR histogram layout): values below 2 * SUB_BUCKETS nanoseconds get
a bucket each, and every power of two above is cut into SUB_BUCKETS equal buckets.
A bucket is then at most 1/SUB_BUCKETS of its lower bound wide, and a quantile is
reported as its bucket's midpoint, within 1/(2*SUB_BUCKETS) = 0.4% of the truth.
A 64-bit range needs at most about 7,500 buckets, however many samples arrive.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from flowtrace.model import Packet

SUB_BUCKET_BITS = 7
SUB_BUCKETS = 1 << SUB_BUCKET_BITS  # 128
_LINEAR_LIMIT = 2 * SUB_BUCKETS  # values below get a bucket of their own


def median(values: Iterable[float]) -> float:
    """The middle value (the mean of the two middle ones for an even count), as
    statistics.median gives it; that module's import (fractions, decimal) costs 6-10 ms of
    a one-probe trace that needs one median."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of no values")
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def bucket_index(value: int) -> int:
    """The histogram bucket of a non-negative value."""
    if value < _LINEAR_LIMIT:
        return value
    shift = value.bit_length() - SUB_BUCKET_BITS - 1
    return shift * SUB_BUCKETS + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The smallest and largest value that fall in bucket `index`."""
    if index < _LINEAR_LIMIT:
        return index, index
    shift = index // SUB_BUCKETS - 1
    low = (index - shift * SUB_BUCKETS) << shift
    return low, low + (1 << shift) - 1


@dataclass
class HopStats:
    """Distribution of one hop's delays (ns): exact count/min/max/mean, quantiles within 1%."""

    count: int = 0
    total: int = 0
    min: int | None = None
    max: int | None = None
    buckets: dict[int, int] = field(default_factory=dict)

    def add(self, delta_ns: int) -> None:
        """Record one delay; negative delays are a caller's bug (sightings are in time order)."""
        if delta_ns < 0:
            raise ValueError(f"negative hop delay: {delta_ns} ns")
        self.count += 1
        self.total += delta_ns
        if self.min is None or delta_ns < self.min:
            self.min = delta_ns
        if self.max is None or delta_ns > self.max:
            self.max = delta_ns
        index = delta_ns if delta_ns < _LINEAR_LIMIT else bucket_index(delta_ns)
        buckets = self.buckets
        buckets[index] = buckets.get(index, 0) + 1

    def merge(self, other: HopStats) -> HopStats:
        """Fold another hop's samples into this one (e.g. from a parallel pass); returns self."""
        if other.count == 0:
            return self
        self.count += other.count
        self.total += other.total
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min
        if other.max is not None and (self.max is None or other.max > self.max):
            self.max = other.max
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        return self

    def quantile(self, q: float) -> int | None:
        """The q-quantile (0 <= q <= 1) by nearest rank; None without samples."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} is outside [0, 1]")
        if self.count == 0 or self.min is None or self.max is None:
            return None
        if q == 0.0:
            return self.min
        if q == 1.0:
            return self.max
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                low, high = bucket_bounds(index)
                return min(max((low + high) // 2, self.min), self.max)
        return self.max

    def summary(self) -> dict[str, int | None]:
        """count, min_ns, median_ns, p99_ns, max_ns, mean_ns (None without samples)."""
        return {
            "count": self.count,
            "min_ns": self.min,
            "median_ns": self.quantile(0.5),
            "p99_ns": self.quantile(0.99),
            "max_ns": self.max,
            "mean_ns": self.total // self.count if self.count else None,
        }


def hop_stats(packets: Iterable[Packet]) -> dict[tuple[str, str, str], HopStats]:
    """HopStats per (from_point, to_point, direction) over every packet's neighbouring sightings."""
    stats: dict[tuple[str, str, str], HopStats] = {}
    for packet in packets:
        sightings = packet.sightings
        for i in range(1, len(sightings)):
            before, after = sightings[i - 1], sightings[i]
            key = (before.point, after.point, packet.direction)
            hop = stats.get(key)
            if hop is None:
                hop = stats[key] = HopStats()
            hop.add(after.time_ns - before.time_ns)
    return stats
