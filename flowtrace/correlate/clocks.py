"""One clock for sightings made on several hosts: each agent's offset, NTP's way.

A packet seen on two hosts is stamped by two kernels' clocks.  Over the channel to each
agent the controller sends its time t1; the agent stamps the request's arrival t2 and
its answer's departure t3 on its own clock; the answer arrives back at t4.  With the
way there and the way back equally long (NTP's one assumption, RFC 5905):

    offset  = ((t2 - t1) + (t3 - t4)) / 2     how far the agent's clock is ahead
    delay   = (t4 - t1) - (t3 - t2)           the round trip, minus the agent's own time
    error  <= delay / 2                       however unequal the two ways really are

Of many exchanges the one with the smallest round trip is kept: it is the one least
disturbed by queueing on the way, and its bound is the tightest.  A sighting stamped t
on that host happened at t - offset on the controller's clock, within +- error.  Pure
code: the tests give it samples with an injected skew.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: At least this many exchanges before an estimate is trusted.
MIN_EXCHANGES = 10


@dataclass(frozen=True)
class ClockOffset:
    """A host's clock against the controller's: offset (ns, the host ahead when positive)
    and the bound on the estimate's error (ns), from the exchange with the shortest
    round trip."""

    offset_ns: int
    error_ns: int
    round_trip_ns: int
    exchanges: int

    def to_controller(self, time_ns: int) -> int:
        """A time on that host's clock, on the controller's."""
        return time_ns - self.offset_ns

    @property
    def label(self) -> str:
        """`+12.3 µs ± 65.1 µs`: the offset applied and its bound, for people."""
        return f"{self.offset_ns / 1000:+.1f} µs ± {self.error_ns / 1000:.1f} µs"

    def as_dict(self) -> dict[str, int]:
        return {
            "offset_ns": self.offset_ns,
            "error_ns": self.error_ns,
            "round_trip_ns": self.round_trip_ns,
            "exchanges": self.exchanges,
        }


#: The controller's own clock: no offset, no error.
SAME_CLOCK = ClockOffset(0, 0, 0, 0)


def exchange_offset(t1: int, t2: int, t3: int, t4: int) -> tuple[int, int]:
    """(offset, round-trip delay) of one exchange, in ns."""
    offset = ((t2 - t1) + (t3 - t4)) // 2
    delay = (t4 - t1) - (t3 - t2)
    return offset, delay


def estimate(samples: Sequence[tuple[int, int, int, int]]) -> ClockOffset:
    """The offset of the exchange with the smallest round trip among (t1, t2, t3, t4)
    samples; ValueError with fewer than MIN_EXCHANGES or one that runs backwards."""
    if len(samples) < MIN_EXCHANGES:
        raise ValueError(f"{len(samples)} clock exchanges: at least {MIN_EXCHANGES} are needed")
    best: tuple[int, int] | None = None
    for t1, t2, t3, t4 in samples:
        if t4 < t1 or t3 < t2:
            raise ValueError(f"a clock exchange runs backwards: {(t1, t2, t3, t4)}")
        offset, delay = exchange_offset(t1, t2, t3, t4)
        if best is None or delay < best[1]:
            best = (offset, max(delay, 0))
    assert best is not None
    offset, delay = best
    return ClockOffset(offset, (delay + 1) // 2, delay, len(samples))


def combined_error(*offsets: ClockOffset) -> int:
    """The bound on a time difference between sightings on these hosts' clocks (each
    host's error adds; the controller's own clock adds none)."""
    return sum(o.error_ns for o in offsets)
