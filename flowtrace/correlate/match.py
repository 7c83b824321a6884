"""Group sightings of one packet across observation points, as a stream.

Input: sightings from every capture point (one shared kernel clock), in roughly
time order: several capture processes append to one file, so order is only
promised within half the window.  Output: Packets, each with its sightings in
path order, its direction and the NAT rewrites between neighbouring sightings.

Memory stays flat for endless input: a reorder buffer holds sightings for as long
as the input has shown it can be out of order (INITIAL_HOLD_NS at first, then twice
the worst lateness seen, at most half a window), open packets live at most one
window, and flows idle for longer than `flow_timeout_ns` are forgotten.  A packet
comes out once nothing can join it any more: when it has been seen at every point of
the path (and every packet before it is out), else one window after its first
sighting.  A late sighting is still placed and joins its packet while that is open.

Rules:
- Sightings with the same fingerprint (fingerprint.py) belong to one packet while
  they fall within `window_ns` of its first sighting.  A second sighting at a point
  the packet was already seen at in the same direction starts a new packet (a
  retransmission); the other way it is the same packet passing again (a loopback
  device shows each packet outgoing then incoming; a bridge shows a hairpinned
  packet going up and coming back).
- Order: by time, on one clock.  Across hosts (`by_path`) the clocks agree only within
  their offsets' error bounds, which can exceed a hop's latency, so the path decides: a
  request's sightings in path order, a reply's in reverse, time only between sightings
  at one point.
- Direction follows conntrack: a packet's flow tuple is its tuple at its first
  point; it is a reply when that tuple is the reverse of a request's tuple at any
  point (its last point, once NAT has been applied).  Echo requests and SYNs are
  requests and echo replies and SYN-ACKs replies whatever came before; an ICMP
  error answers the packet it quotes; otherwise the side that sent a flow's first
  packet is its requester.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from operator import itemgetter
from types import ModuleType

from flowtrace import native
from flowtrace.correlate.fingerprint import NAT_PROOF_FIELDS, fingerprint
from flowtrace.correlate.nat import Rewrite, nat_events, undo_rewrites
from flowtrace.model import Direction, Headers, NatEvent, NatKind, Packet, Sighting

DEFAULT_WINDOW_NS = 2_000_000_000
#: How far out of time order sightings are first expected to come: a capture's rings
#: hand over blocks at least every 60 ms.  The hold grows when the input is worse.
INITIAL_HOLD_NS = 100_000_000
DEFAULT_FLOW_TIMEOUT_NS = 300_000_000_000
#: Without direction flags, a loopback device's two sightings of one packet are told
#: from a retransmission by the time between them: microseconds against milliseconds.
LOOPBACK_TWIN_NS = 1_000_000

_NAT_MEMO_LIMIT = 1 << 14
#: The C grouper (_grouper.c), or None: _Grouper does the work in Python.
_NATIVE: ModuleType | None = native.load("flowtrace.correlate._grouper")

_TCP_SYN = 0x02
_TCP_ACK = 0x10
_ECHO_REQUESTS = {1: frozenset((8, 13, 15, 17)), 58: frozenset((128,))}
_ECHO_REPLIES = {1: frozenset((0, 14, 16, 18)), 58: frozenset((129,))}

FlowTuple = tuple[int, str, int | None, str, int | None]


def flow_tuple(h: Headers) -> FlowTuple:
    """(protocol, source, source port, destination, destination port) as conntrack keys it.

    The ICMP echo identifier stands for both ports, so a reply's tuple is the exact
    reverse of its request's.
    """
    if h.icmp_id is None:
        return _port_flow(h)
    return (h.proto, h.src, h.icmp_id, h.dst, h.icmp_id)


#: (proto, src, sport, dst, dport) of a Headers tuple, picked in C: runs once per sighting.
_port_flow = itemgetter(*(Headers._fields.index(name) for name in (
    "proto", "src", "sport", "dst", "dport",
)))  # fmt: skip


def _reverse(t: FlowTuple) -> FlowTuple:
    return (t[0], t[3], t[4], t[1], t[2])


class _Building:
    """A packet still collecting sightings."""

    __slots__ = ("at", "complete", "first_ns", "key", "sightings", "twice")

    def __init__(self, key: Hashable, first: Sighting) -> None:
        self.key = key
        self.first_ns = first.time_ns
        self.sightings = [first]
        self.at = {first.point: first}  # the first sighting at each point
        self.twice: set[str] = set()  # points that saw it a second time
        self.complete = False  # seen at every point of the path: it can grow no more

    def take(self, s: Sighting, seen_again: Callable[[Sighting, Sighting], bool]) -> bool:
        """Add s if it can be another sighting of this packet; False if it starts a new one."""
        earlier = self.at.get(s.point)
        if earlier is None:
            self.at[s.point] = s
        elif s.point in self.twice or not seen_again(earlier, s):
            return False
        else:
            self.twice.add(s.point)
        self.sightings.append(s)
        return True


def _seen_again(earlier: Sighting, s: Sighting) -> bool:
    """s is the same packet passing a point it already passed, the other way.

    A loopback device shows every packet twice (outgoing, then incoming), and a
    bridge shows a hairpinned packet going up to the host and coming back down.
    What looks the same at one point in the same direction is a retransmission,
    and an exact reverse of the tuple (unless it is its own reverse, as on
    loopback) is an answer.  Without direction flags only
    the loopback case is recognised: the same tuple within LOOPBACK_TWIN_NS.
    """
    before, now = flow_tuple(earlier.headers), flow_tuple(s.headers)
    if earlier.outbound is not None and s.outbound is not None:
        answer = now != before and now == _reverse(before)
        return earlier.outbound != s.outbound and not answer
    return now == before and abs(s.time_ns - earlier.time_ns) <= LOOPBACK_TWIN_NS


class _Flow:
    """What is known about one connection: when last seen, and its request's rewrites."""

    __slots__ = ("last_ns", "request_nat", "undone")

    def __init__(self, now_ns: int) -> None:
        self.last_ns = now_ns
        self.request_nat: tuple[NatEvent, ...] = ()
        self.undone: dict[Rewrite, NatKind] = {}  # what a reply's rewrite undoes


class _Grouper:
    """The per-sighting work: the reorder buffer, and grouping sightings into packets.

    Takes sightings in input order; hands back each packet it closes as the list of
    its sightings in arrival order (the Correlator orders them and names direction
    and NAT).  _grouper.c is the same in C (tests hold the two equal); this one is
    the reference, and what runs without a compiler or with FLOWTRACE_NATIVE=0.
    """

    def __init__(
        self,
        window_ns: int,
        initial_hold_ns: int,
        complete_at: int,
        fingerprint: Callable[[Headers], Hashable],
        seen_again: Callable[[Sighting, Sighting], bool],
    ) -> None:
        self.window_ns = window_ns
        self._max_hold_ns = window_ns // 2
        self._hold_ns = min(initial_hold_ns, self._max_hold_ns)
        self._complete_at = complete_at
        self._fingerprint = fingerprint
        self._seen_again = seen_again
        # The reorder buffer.  Each point's sightings come in time order (one capture
        # ring writes them, or the file is in time order), while the points interleave
        # block by block: so each point has a run in time order, and the runs are merged
        # through a heap of their heads, as small as the number of points.  The rare
        # sighting older than its point's previous one waits in a heap of its own.
        self._runs: dict[str, deque[Sighting]] = {}
        self._heads: list[tuple[int, int, deque[Sighting]]] = []
        self._late: list[tuple[int, int, Sighting]] = []
        self._arrivals = 0
        self._newest_ns: int | None = None
        self._open: deque[_Building] = deque()  # by first sighting
        self._latest: dict[Hashable, _Building] = {}  # newest open packet per fingerprint

    @property
    def held(self) -> int:
        """Sightings held right now (buffered or in open packets): bounded by the window."""
        buffered = sum(len(run) for run in self._runs.values()) + len(self._late)
        return buffered + sum(len(b.sightings) for b in self._open)

    def add_many(self, sightings: Iterable[Sighting]) -> list[list[Sighting]]:
        """Take sightings in input order; return the packets they closed.

        Each sighting releases what its arrival lets out of the reorder buffer, in one
        loop over local names: this runs once per frame of captures of millions.
        """
        runs, heads, late = self._runs, self._heads, self._late
        push, replace_head, pop, place = (
            heapq.heappush, heapq.heapreplace, heapq.heappop, self._place,
        )  # fmt: skip
        arrivals, newest_ns, hold_ns = self._arrivals, self._newest_ns, self._hold_ns
        done: list[list[Sighting]] = []
        try:
            for s in sightings:
                t = s.time_ns
                run = runs.get(s.point)
                if run is None:
                    run = runs[s.point] = deque()
                if not run:
                    run.append(s)
                    push(heads, (t, arrivals, run))
                    arrivals += 1
                elif t >= run[-1].time_ns:
                    run.append(s)
                else:
                    push(late, (t, arrivals, s))
                    arrivals += 1
                if newest_ns is None or t >= newest_ns:
                    newest_ns = t
                elif 2 * (newest_ns - t) > hold_ns and hold_ns < self._max_hold_ns:
                    hold_ns = min(2 * (newest_ns - t), self._max_hold_ns)
                # Release up to the horizon: as _release, inline.
                horizon_ns = newest_ns - hold_ns
                while True:
                    if (
                        heads
                        and heads[0][0] <= horizon_ns
                        and (not late or heads[0][0] <= late[0][0])
                    ):
                        run = heads[0][2]
                        released = run.popleft()
                        if run:
                            # The arrival number is taken before it is counted, as the
                            # other pushes do: the C grouper numbers them the same way.
                            replace_head(heads, (run[0].time_ns, arrivals, run))
                            arrivals += 1
                        else:
                            pop(heads)
                        place(released, done)
                    elif late and late[0][0] <= horizon_ns:
                        place(pop(late)[2], done)
                    else:
                        break
        finally:
            self._arrivals, self._newest_ns, self._hold_ns = arrivals, newest_ns, hold_ns
        return done

    def finish(self) -> list[list[Sighting]]:
        """End of input: place what is buffered and return every packet still open."""
        done: list[list[Sighting]] = []
        if self._newest_ns is not None:
            self._release(self._newest_ns, done)
        while self._open:
            done.append(self._close(self._open.popleft()))
        return done

    def _release(self, horizon_ns: int, done: list[list[Sighting]]) -> None:
        """Place buffered sightings up to horizon_ns in time order, merging runs and heap."""
        heads, late, pop, place = self._heads, self._late, heapq.heappop, self._place
        while True:
            if heads and heads[0][0] <= horizon_ns and (not late or heads[0][0] <= late[0][0]):
                run = heads[0][2]
                s = run.popleft()
                if run:
                    heapq.heapreplace(heads, (run[0].time_ns, self._arrivals, run))
                    self._arrivals += 1
                else:
                    pop(heads)
                place(s, done)
            elif late and late[0][0] <= horizon_ns:
                place(pop(late)[2], done)
            else:
                return

    def _place(self, s: Sighting, done: list[list[Sighting]]) -> None:
        """Put one sighting (in time order) into its packet, closing expired packets first."""
        open_packets = self._open
        if open_packets:
            oldest_open = s.time_ns - self.window_ns
            while open_packets and (
                open_packets[0].complete or open_packets[0].first_ns < oldest_open
            ):
                done.append(self._close(open_packets.popleft()))
        key = self._fingerprint(s.headers)
        building = self._latest.get(key)
        if building is None or not building.take(s, self._seen_again):
            building = self._latest[key] = _Building(key, s)
            open_packets.append(building)
        if len(building.at) == self._complete_at:
            building.complete = True

    def _close(self, building: _Building) -> list[Sighting]:
        if self._latest.get(building.key) is building:
            del self._latest[building.key]
        return building.sightings


def _new_grouper(window_ns: int, complete_at: int) -> _Grouper:
    """The C grouper where it is built (and FLOWTRACE_NATIVE is not 0), else _Grouper."""
    if _NATIVE is None:
        return _Grouper(window_ns, INITIAL_HOLD_NS, complete_at, fingerprint, _seen_again)
    grouper: _Grouper = _NATIVE.Grouper(
        window_ns, INITIAL_HOLD_NS, complete_at, fingerprint, _seen_again,
        NAT_PROOF_FIELDS, Headers._fields.index("inner"),
    )  # fmt: skip
    return grouper


class Correlator:
    """Feed sightings one at a time; take packets as they complete.

    `add` returns the packets that can no longer grow; `finish` returns the rest.
    Packet ids are 1, 2, 3... in order of first sighting.
    """

    def __init__(
        self,
        point_order: Sequence[str] | None = None,
        window_ns: int = DEFAULT_WINDOW_NS,
        flow_timeout_ns: int = DEFAULT_FLOW_TIMEOUT_NS,
        *,
        by_path: bool = False,
    ) -> None:
        if window_ns <= 0:
            raise ValueError("window_ns must be positive")
        self.window_ns = window_ns
        self.by_path = by_path and bool(point_order)
        self.flow_timeout_ns = flow_timeout_ns
        order = list(point_order or ())
        # A packet seen at every point of a path of two or more is complete (one point
        # may be a loopback device, which shows every packet twice).
        complete_at = len(set(order)) if len(set(order)) > 1 else 0
        self._grouper = _new_grouper(window_ns, complete_at)
        self._rank = {p: i for i, p in enumerate(order)}
        self._unranked = len(order)
        self._nat_memo: dict[tuple[object, ...], NatEvent] = {}
        self._requests: dict[FlowTuple, _Flow] = {}  # tuples a requester sends
        self._replies: dict[FlowTuple, _Flow] = {}  # tuples its peer answers with
        self._swept_ns: int | None = None
        self._next_id = 1

    @property
    def held(self) -> int:
        """Sightings held right now (buffered or in open packets): bounded by the window."""
        return self._grouper.held

    @property
    def flows(self) -> int:
        """Flow tuples remembered for telling requests from replies."""
        return len(self._requests)

    def add(self, s: Sighting) -> list[Packet]:
        """Take one sighting; return the packets it completed (often none)."""
        return self.add_many((s,))

    def add_many(self, sightings: Iterable[Sighting]) -> list[Packet]:
        """Take sightings in input order; return the packets they completed.

        The same as `add` for each in turn, in one pass: this runs once per frame of
        captures of millions.
        """
        return [self._emit(group) for group in self._grouper.add_many(sightings)]

    def finish(self) -> list[Packet]:
        """End of input: place what is buffered and return every packet still open."""
        return [self._emit(group) for group in self._grouper.finish()]

    def _emit(self, sightings: list[Sighting]) -> Packet:
        rank, unranked = self._rank, self._unranked
        if len(sightings) > 1:
            if self.by_path:
                sightings.sort(key=lambda s: (rank.get(s.point, unranked), s.time_ns))
            else:
                sightings.sort(
                    key=lambda s: (s.time_ns, rank.get(s.point, unranked), not s.outbound)
                )
        direction, flow = self._direction(sightings)
        if direction == "reply" and len(sightings) > 1:
            if self.by_path:
                sightings.sort(key=lambda s: (-rank.get(s.point, -1), s.time_ns))
            else:
                sightings.sort(key=lambda s: (s.time_ns, -rank.get(s.point, -1), not s.outbound))
        if len(self._nat_memo) > _NAT_MEMO_LIMIT:
            self._nat_memo.clear()
        if direction == "request":
            nat = nat_events(sightings, direction, None, self._nat_memo)
            if nat and nat != flow.request_nat:
                flow.request_nat = nat
                flow.undone = undo_rewrites(nat)
        else:
            nat = nat_events(sightings, direction, flow.undone, self._nat_memo)
        packet = Packet(self._next_id, direction, tuple(sightings), nat)
        self._next_id += 1
        return packet

    # --- direction ------------------------------------------------------------------------

    def _direction(self, sightings: list[Sighting]) -> tuple[Direction, _Flow]:
        """Request or reply, and the flow the packet belongs to (registered as seen)."""
        now = sightings[0].time_ns
        self._sweep(now)
        h = sightings[0].headers
        if h.inner is not None:  # an ICMP error: it answers the packet it quotes
            quoted = flow_tuple(h.inner)
            flow = self._requests.get(quoted) or self._replies.get(quoted) or _Flow(now)
            return ("request" if quoted in self._replies else "reply"), flow
        first = flow_tuple(h)
        direction = _direction_by_header(h)
        if direction is None:
            if first in self._requests:
                direction = "request"
            elif first in self._replies:
                direction = "reply"
            else:
                direction = "request"  # the first packet of a flow names its requester
        flow = self._requests.get(first) or self._replies.get(first) or _Flow(now)
        flow.last_ns = now
        self._register(sightings, direction, flow)
        return direction, flow

    def _register(self, sightings: Sequence[Sighting], direction: Direction, flow: _Flow) -> None:
        """Remember every tuple the packet had along its path, and the reverse of each."""
        same, other = (
            (self._requests, self._replies)
            if direction == "request"
            else (self._replies, self._requests)
        )
        previous = None
        for s in sightings:
            t = flow_tuple(s.headers)
            if t != previous:
                same[t] = flow
                other[_reverse(t)] = flow
                previous = t

    def _sweep(self, now_ns: int) -> None:
        """Forget flows idle for longer than the flow timeout (amortised: every quarter)."""
        if self._swept_ns is None:
            self._swept_ns = now_ns
            return
        if now_ns - self._swept_ns < self.flow_timeout_ns // 4:
            return
        self._swept_ns = now_ns
        oldest = now_ns - self.flow_timeout_ns
        self._requests = {t: f for t, f in self._requests.items() if f.last_ns >= oldest}
        self._replies = {t: f for t, f in self._replies.items() if f.last_ns >= oldest}


def _direction_by_header(h: Headers) -> Direction | None:
    """Echo requests and SYNs ask, echo replies and SYN-ACKs answer, whatever came before."""
    if h.icmp_type is not None and h.proto in _ECHO_REQUESTS:
        if h.icmp_type in _ECHO_REQUESTS[h.proto]:
            return "request"
        if h.icmp_type in _ECHO_REPLIES[h.proto]:
            return "reply"
    elif h.proto == 6 and h.tcp_flags is not None and h.tcp_flags & _TCP_SYN:
        return "reply" if h.tcp_flags & _TCP_ACK else "request"
    return None


def correlate(
    sightings: Iterable[Sighting],
    point_order: Sequence[str] | None = None,
    window_ns: int = DEFAULT_WINDOW_NS,
    *,
    by_path: bool = False,
) -> Iterator[Packet]:
    """Group sightings into packets, yielding each once it can no longer grow (`by_path`:
    order them by the path, for sightings on several hosts' clocks)."""
    correlator = Correlator(point_order, window_ns, by_path=by_path)
    for s in sightings:
        yield from correlator.add(s)
    yield from correlator.finish()
