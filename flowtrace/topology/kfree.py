"""The kernel's drop reasons: `skb:kfree_skb` lines of a tracefs instance (pure).

The kernel calls kfree_skb for a packet it drops (consume_skb for one it is done with)
and the tracepoint says why (`reason`, an enum skb_drop_reason name such as
NETFILTER_DROP, IP_RPFILTER, NEIGH_FAILED, IP_INNOROUTES) and where (`location`, the
function).  It does not say which packet beyond its ethertype (`protocol`), and in which
namespace it is not said at all: a reason seen while a probe was out is matched to it by
time and protocol only, never by the packet's contents.

flowtrace reads them from a tracefs instance of its own (run.tracefs) whose clock is
CLOCK_MONOTONIC ("mono"), the clock of time.monotonic_ns(), so a probe's flight is
bounded by its sending and the last trace event of its packets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: The instance flowtrace makes for a run is named INSTANCE_PREFIX + its pid.
INSTANCE_PREFIX = "flowtrace-"
#: Ethertype of IPv4, the probes' protocol; the instance's filter keeps only these.
ETH_P_IP = 0x0800
#: What the matching of a reason to a probe rests on, said with every one shown.
MATCHED_BY = "matched by time and protocol only: tracefs cannot see the packet's contents"

_LINE = re.compile(
    r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[(?P<cpu>\d+)\]\s+\S+\s+"
    r"(?P<secs>\d+)\.(?P<frac>\d+):\s+kfree_skb:\s+(?P<args>.*)$"
)
_ARG = re.compile(r"(?P<key>skbaddr|rx_sk|protocol|location)=(?P<value>\S+)")
_REASON = re.compile(r"reason:\s*(?P<reason>\S+)")


@dataclass(frozen=True)
class KfreeEvent:
    """One skb:kfree_skb line: when (CLOCK_MONOTONIC ns), why, where, in whose context."""

    time_ns: int
    reason: str
    location: str
    protocol: int
    task: str
    cpu: int


def parse_kfree(line: str) -> KfreeEvent | None:
    """A line of the instance's `trace` file, or None (headers, other events)."""
    m = _LINE.match(line)
    if m is None:
        return None
    args = {a["key"]: a["value"] for a in _ARG.finditer(m["args"])}
    reason = _REASON.search(m["args"])
    frac = m["frac"]
    time_ns = int(m["secs"]) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])
    try:
        protocol = int(args.get("protocol", "0"), 0)
    except ValueError:
        protocol = 0
    return KfreeEvent(
        time_ns=time_ns,
        reason=reason["reason"] if reason else "NOT_SPECIFIED",
        location=args.get("location", "?"),
        protocol=protocol,
        task=f"{m['task'].strip()}-{m['pid']}",
        cpu=int(m["cpu"]),
    )


def parse_trace(text: str) -> list[KfreeEvent]:
    return [ev for line in text.splitlines() if (ev := parse_kfree(line)) is not None]


@dataclass(frozen=True)
class ProbeDrop:
    """A drop the kernel reported while a probe was out."""

    probe: int
    #: Nanoseconds from the probe's sending to the drop.
    after_ns: int
    event: KfreeEvent


#: A probe's flight ends this long after the kernel last traced one of its packets: a
#: drop follows the last hook it met within microseconds; the window is kept short so
#: that a busy host's other drops stay out of it.
FLIGHT_SLACK_NS = 20_000_000


def flight_windows(
    sent_ns: Sequence[int], last_traced_ns: Mapping[int, int], end_ns: int
) -> list[tuple[int, int]]:
    """Each probe's flight, in CLOCK_MONOTONIC ns: from its sending to FLIGHT_SLACK_NS
    after the last trace event of its packets (or after its sending, if none was
    traced), and never past the next probe's sending or `end_ns`."""
    windows = []
    for probe, start in enumerate(sent_ns):
        stop = sent_ns[probe + 1] if probe + 1 < len(sent_ns) else end_ns
        last = max(start, last_traced_ns.get(probe, start))
        windows.append((start, min(stop, last + FLIGHT_SLACK_NS)))
    return windows


def drops_in_windows(
    events: Iterable[KfreeEvent], windows: Sequence[tuple[int, int]]
) -> list[ProbeDrop]:
    """Each IPv4 drop inside a probe's flight window, with the probe it falls to."""
    found = []
    for ev in sorted(events, key=lambda e: e.time_ns):
        if ev.protocol != ETH_P_IP:
            continue
        for probe, (start, stop) in enumerate(windows):
            if start <= ev.time_ns < stop:
                found.append(ProbeDrop(probe, ev.time_ns - start, ev))
                break
    return found


#: What a drop reason means, in words, for the reasons a probe meets on container hosts.
REASON_WORDS = {
    "NETFILTER_DROP": "a netfilter rule or policy dropped it",
    "IP_RPFILTER": "the reverse-path filter (rp_filter) dropped it: its source is not "
    "reachable back through the interface it came in by",
    "IP_INNOROUTES": "no route for it on the way in",
    "IP_OUTNOROUTES": "no route for it on the way out",
    "NEIGH_FAILED": "no neighbour: the next hop's ARP got no answer",
    "NEIGH_QUEUEFULL": "the queue of packets waiting for a neighbour's ARP answer was full",
    "NEIGH_CREATEFAIL": "the kernel could not make a neighbour entry",
    "NEIGH_DEAD": "the neighbour entry died while the packet waited",
    "OTHERHOST": "the frame was addressed to another host's MAC address",
    "IP_INADDRERRORS": "an invalid destination address",
    "IP_LOCAL_SOURCE": "its source is one of this namespace's own addresses",
    "IP_INVALID_SOURCE": "an invalid source address",
    "IP_LOCALNET": "a loopback-range address outside lo",
    "NO_SOCKET": "no socket wanted it (nothing listens)",
    "SOCKET_RCVBUFF": "the receiving socket's buffer was full",
    "QDISC_DROP": "the device's queue discipline dropped it",
    "FULL_RING": "a packet socket's ring was full",
    "CPU_BACKLOG": "the CPU's input backlog was full",
    "TC_INGRESS": "a tc ingress filter dropped it",
    "TC_EGRESS": "a tc egress filter dropped it",
    "IP_CSUM": "a bad IP checksum",
    "IP_INHDR": "a bad IP header",
    "PKT_TOO_SMALL": "the packet was too small",
    "PKT_TOO_BIG": "the packet was too big for the device's MTU",
    "UNHANDLED_PROTO": "no handler for its protocol",
    "DEV_READY": "the device was not up",
}


#: Drops a probe makes by design, by reason and the function that dropped it.
EXPECTED = {
    ("NO_SOCKET", "ping_rcv"): "an echo reply reached the source's stack, where no ping "
    "socket waits for it (flowtrace reads it from a raw socket)",
    ("NO_SOCKET", "tcp_v4_rcv"): "a TCP segment no socket wanted: a closed port's SYN, or a "
    "SYN-ACK to flowtrace's bare SYN (the source answers it with a RST)",
    ("OTHERHOST", "ip_rcv_core"): "a frame for another host's MAC address reached an IP "
    "stack: a bridge flowtrace captures on is promiscuous, so it hands every frame to its "
    "namespace's stack too, which drops the ones not addressed to it",
    ("IP_INADDRERRORS", "ip_error"): "the input route lookup failed: no route for its "
    "destination, or forwarding is off on the interface it came in by",
    ("NOT_SPECIFIED", "ip_error"): "the input route lookup refused it and the kernel names "
    "no reason: a blackhole route (or a prohibit one, answered with ICMP)",
    ("NO_SOCKET", "__udp4_lib_rcv"): "a UDP datagram no socket wanted: nothing listens on "
    "its port (the kernel answers ICMP port unreachable)",
}


def reason_words(reason: str, location: str = "") -> str:
    """What a drop means: the reason's words, or what it is for a probe where known."""
    function = location.split("+")[0]
    return EXPECTED.get((reason, function)) or REASON_WORDS.get(reason, "")
