"""Builders of realistic Trace objects for the output tests (frames, plots, terminal).

They mirror what the tracer records on the Docker lab: the default bridge docker0
(172.17.0.0/16), containers c1 (.2), c2 (.3) and web (.4, published as 8080:80), and a
routed "outside" namespace behind the host's uplink ft-uplink (203.0.113.1, the outside
host is 203.0.113.2).  Timings come from a seeded generator with the per-hop costs
measured on this kind of machine: a veth hop 5-20 us, a bridge hop 2-10 us, a routed
hop through netfilter a little more, the first packet of a NATed flow much more (the
conntrack entry and the NAT binding are created then), and a few outliers where the
softirq work was deferred.  Only flowtrace.model is used, so these work before the
tracer and the pcap reader exist.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from flowtrace.model import (
    Address,
    Headers,
    Namespace,
    NatEvent,
    Packet,
    Point,
    Sighting,
    Trace,
    Verdict,
)

ICMP, TCP = 1, 6
ECHO_REQUEST, ECHO_REPLY = 8, 0
SYN, SYN_ACK = 0x02, 0x12
EPOCH_NS = 1_732_733_000_000_000_000  # 2024-11-27, a plausible capture date
PROBE_INTERVAL_NS = 10_000_000  # flowtrace sends probes 10 ms apart

HOST = Namespace(path="/proc/1/ns/net", label="host", inode=4026531840)
C1 = Namespace(path="/proc/4242/ns/net", label="c1", inode=4026532301, container="c1")
C2 = Namespace(path="/proc/4318/ns/net", label="c2", inode=4026532377, container="c2")
WEB = Namespace(path="/proc/4407/ns/net", label="web", inode=4026532455, container="web")
OUTSIDE = Namespace(path="/run/netns/outside", label="netns:outside", inode=4026532519)

C1_IP, C2_IP, WEB_IP = "172.17.0.2", "172.17.0.3", "172.17.0.4"
UPLINK_IP, OUTSIDE_IP = "203.0.113.1", "203.0.113.2"
MASQUERADE_RULE = "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
DNAT_RULE = (
    "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.4:80"
)


def _point(
    ns: Namespace,
    ifname: str,
    ifindex: int,
    role: str,
    mac: str,
    addresses: tuple[str, ...] = (),
    promisc: bool = False,
) -> Point:
    return Point(
        id=f"{ns.label}/{ifname}",
        netns=ns,
        ifname=ifname,
        ifindex=ifindex,
        role=role,
        promisc=promisc,
        mac=mac,
        addresses=addresses,
    )


C1_ETH0 = _point(C1, "eth0", 11, "source", "02:42:ac:11:00:02", (f"{C1_IP}/16",))
C1_VETH = _point(HOST, "veth1a2b3c4", 12, "veth-peer", "9a:3c:51:0e:7d:21")
DOCKER0 = _point(HOST, "docker0", 3, "bridge", "02:42:5e:8b:19:a0", ("172.17.0.1/16",), True)
C2_VETH = _point(HOST, "veth5d6e7f8", 14, "veth-peer", "ce:10:8f:42:b6:03")
C2_ETH0 = _point(C2, "eth0", 13, "destination", "02:42:ac:11:00:03", (f"{C2_IP}/16",))
WEB_VETH = _point(HOST, "veth9f8e7d6", 16, "veth-peer", "5e:77:21:c4:09:bb")
WEB_ETH0 = _point(WEB, "eth0", 15, "destination", "02:42:ac:11:00:04", (f"{WEB_IP}/16",))
UPLINK = _point(HOST, "ft-uplink", 9, "egress", "d6:41:0a:93:5f:12", (f"{UPLINK_IP}/24",))
OUTSIDE_ETH0 = _point(OUTSIDE, "eth0", 2, "destination", "7e:c2:38:1d:a4:60", (f"{OUTSIDE_IP}/24",))
OUTSIDE_SOURCE = replace(OUTSIDE_ETH0, role="source")


@dataclass(frozen=True)
class _Hop:
    """One step of a walk: the point reached, what kind of link led there, the direction flag."""

    point: Point
    link: str | None  # None for the first point of a walk
    outbound: bool


class _Timing:
    """Per-hop costs drawn from a seeded generator, in nanoseconds."""

    # (low, mode, high) in microseconds for a triangular draw.
    COSTS_US: ClassVar[dict[str, tuple[float, float, float]]] = {
        "veth": (5.0, 8.0, 20.0),
        "bridge": (2.0, 4.0, 10.0),
        "route": (6.0, 10.0, 25.0),
        "nat-new": (45.0, 60.0, 110.0),  # first packet: conntrack entry + NAT binding
        "echo": (12.0, 18.0, 40.0),  # kernel answers an echo request
        "accept": (18.0, 25.0, 55.0),  # a listening socket answers a SYN
    }
    OUTLIER_CHANCE = 0.01
    OUTLIER_US = (60.0, 400.0)

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def cost_ns(self, link: str) -> int:
        low, mode, high = self.COSTS_US[link]
        us = self.rng.triangular(low, high, mode)
        if link in ("veth", "bridge", "route") and self.rng.random() < self.OUTLIER_CHANCE:
            us += self.rng.uniform(*self.OUTLIER_US)
        return round(us * 1000)

    def jitter_ns(self) -> int:
        return self.rng.randrange(0, 400_000)


class _FrameCounter(Counter[str]):
    """File order of frames per point, as a capture would number them."""

    def take(self, point: Point) -> int:
        index = self[point.id]
        self[point.id] += 1
        return index


def _walk(
    timing: _Timing,
    frames: _FrameCounter,
    start_ns: int,
    hops: Sequence[_Hop],
    headers: Sequence[Headers],
    first_link: str | None = None,
    delay_ns: dict[str, int] | None = None,
) -> tuple[Sighting, ...]:
    """Sightings of one packet along `hops`; headers[i] is what the packet looked like at hop i.

    `delay_ns` adds a fixed delay before reaching a point (a netem qdisc on the way there).
    """
    sightings: list[Sighting] = []
    now = start_ns
    for hop, hdr in zip(hops, headers, strict=True):
        link = hop.link if sightings else first_link
        if link is not None:
            now += timing.cost_ns(link)
        now += (delay_ns or {}).get(hop.point.id, 0)
        sightings.append(
            Sighting(
                point=hop.point.id,
                time_ns=now,
                headers=hdr,
                outbound=hop.outbound,
                frame_index=frames.take(hop.point),
            )
        )
    return tuple(sightings)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def _reversed_hops(hops: Sequence[_Hop]) -> list[_Hop]:
    """The reply's walk: the same points backwards, links shifted so each is the one entered."""
    points = [h.point for h in reversed(hops)]
    links = [None, *(h.link for h in reversed(hops[1:]))]
    outbound = [not h.outbound for h in reversed(hops)]
    return [_Hop(p, link, out) for p, link, out in zip(points, links, outbound, strict=True)]


PING_REQUEST_HOPS = [
    _Hop(C1_ETH0, None, True),
    _Hop(C1_VETH, "veth", False),
    _Hop(DOCKER0, "bridge", False),
    _Hop(C2_VETH, "bridge", True),
    _Hop(C2_ETH0, "veth", False),
]


def docker0_ping(
    probes: int = 100,
    seed: int = 1,
    lost_probes: Collection[int] = (),
    request_delay_us: dict[str, float] | None = None,
) -> Trace:
    """`flowtrace ping c1 c2 --count N`: echo requests and replies across docker0.

    Probes in `lost_probes` are dropped after host/docker0 (as a FORWARD DROP rule would)
    and get no reply.  `request_delay_us` delays requests before they reach a point, as
    `tc qdisc add dev veth5d6e7f8 root netem delay 150us` would for {"c2/eth0": 150}.
    """
    delay_ns = {point: round(us * 1000) for point, us in (request_delay_us or {}).items()}
    timing = _Timing(seed)
    frames = _FrameCounter()
    reply_hops = _reversed_hops(PING_REQUEST_HOPS)
    request_ip_id = timing.rng.randrange(65536)
    packets: list[Packet] = []
    verdicts: list[Verdict] = []
    for probe in range(probes):
        start = EPOCH_NS + probe * PROBE_INTERVAL_NS + timing.jitter_ns()
        request = Headers(
            version=4,
            src=C1_IP,
            dst=C2_IP,
            proto=ICMP,
            ip_id=(request_ip_id + probe) % 65536,
            ttl=64,
            length=84,
            icmp_type=ECHO_REQUEST,
            icmp_code=0,
            icmp_id=0x4654,
            icmp_seq=probe + 1,
            payload_digest=_digest(f"ping {probe}"),
        )
        hops = PING_REQUEST_HOPS[:3] if probe in lost_probes else PING_REQUEST_HOPS
        req = _walk(timing, frames, start, hops, [request] * len(hops), delay_ns=delay_ns)
        packets.append(Packet(2 * probe + 1, "request", req, probe=probe))
        if probe in lost_probes:
            verdicts.append(Verdict(probe, "lost", last_point=DOCKER0.id))
            continue
        reply = request._replace(
            src=C2_IP,
            dst=C1_IP,
            ip_id=timing.rng.randrange(65536),
            icmp_type=ECHO_REPLY,
        )
        rep = _walk(timing, frames, req[-1].time_ns, reply_hops, [reply] * 5, first_link="echo")
        packets.append(Packet(2 * probe + 2, "reply", rep, probe=probe))
        verdicts.append(
            Verdict(probe, "replied", detail="echo reply", rtt_ns=rep[-1].time_ns - req[0].time_ns)
        )
    return Trace(
        points=tuple(h.point for h in PING_REQUEST_HOPS),
        packets=tuple(packets),
        verdicts=tuple(verdicts),
        meta={
            "command": f"flowtrace ping c1 c2 --count {probes}",
            "source": "c1",
            "destination": "c2",
        },
    )


SNAT_REQUEST_HOPS = [
    _Hop(C1_ETH0, None, True),
    _Hop(C1_VETH, "veth", False),
    _Hop(DOCKER0, "bridge", False),
    _Hop(UPLINK, "route", True),
    _Hop(OUTSIDE_ETH0, "veth", False),
]


def snat_walk(probes: int = 20, seed: int = 2) -> Trace:
    """`flowtrace ping c1 203.0.113.2`: Docker's MASQUERADE rewrites the source on the way out.

    The reply's destination is put back between host/ft-uplink and host/docker0 (conntrack's
    reverse translation).  The first probe pays for creating the NAT binding.
    """
    timing = _Timing(seed)
    frames = _FrameCounter()
    reply_hops = _reversed_hops(SNAT_REQUEST_HOPS)
    icmp_id = 0x4655
    conntrack = (
        f"icmp     1 29 src={C1_IP} dst={OUTSIDE_IP} type=8 code=0 id={icmp_id} "
        f"src={OUTSIDE_IP} dst={UPLINK_IP} type=0 code=0 id={icmp_id} mark=0 use=1"
    )
    snat = NatEvent(
        kind="SNAT",
        between=(DOCKER0.id, UPLINK.id),
        before=Address(C1_IP, icmp_id),
        after=Address(UPLINK_IP, icmp_id),
        rule=MASQUERADE_RULE,
        conntrack=conntrack,
    )
    un_snat = NatEvent(
        kind="DNAT",
        between=(UPLINK.id, DOCKER0.id),
        before=Address(UPLINK_IP, icmp_id),
        after=Address(C1_IP, icmp_id),
        rule=MASQUERADE_RULE,
        conntrack=conntrack,
        reverse_of="SNAT",
    )
    request_ip_id = timing.rng.randrange(65536)
    packets: list[Packet] = []
    verdicts: list[Verdict] = []
    for probe in range(probes):
        start = EPOCH_NS + probe * PROBE_INTERVAL_NS + timing.jitter_ns()
        inside = Headers(
            version=4,
            src=C1_IP,
            dst=OUTSIDE_IP,
            proto=ICMP,
            ip_id=(request_ip_id + probe) % 65536,
            ttl=64,
            length=84,
            icmp_type=ECHO_REQUEST,
            icmp_code=0,
            icmp_id=icmp_id,
            icmp_seq=probe + 1,
            payload_digest=_digest(f"snat {probe}"),
        )
        outside = inside._replace(src=UPLINK_IP, ttl=63)
        hops = list(SNAT_REQUEST_HOPS)
        if probe == 0:
            hops[3] = replace(hops[3], link="nat-new")
        req = _walk(timing, frames, start, hops, [inside, inside, inside, outside, outside])
        packets.append(Packet(2 * probe + 1, "request", req, nat=(snat,), probe=probe))

        answer = Headers(
            version=4,
            src=OUTSIDE_IP,
            dst=UPLINK_IP,
            proto=ICMP,
            ip_id=timing.rng.randrange(65536),
            ttl=64,
            length=84,
            icmp_type=ECHO_REPLY,
            icmp_code=0,
            icmp_id=icmp_id,
            icmp_seq=probe + 1,
            payload_digest=inside.payload_digest,
        )
        delivered = answer._replace(dst=C1_IP, ttl=63)
        rep = _walk(
            timing,
            frames,
            req[-1].time_ns,
            reply_hops,
            [answer, answer, delivered, delivered, delivered],
            first_link="echo",
        )
        packets.append(Packet(2 * probe + 2, "reply", rep, nat=(un_snat,), probe=probe))
        verdicts.append(
            Verdict(probe, "replied", detail="echo reply", rtt_ns=rep[-1].time_ns - req[0].time_ns)
        )
    return Trace(
        points=tuple(h.point for h in SNAT_REQUEST_HOPS),
        packets=tuple(packets),
        verdicts=tuple(verdicts),
        meta={
            "command": f"flowtrace ping c1 {OUTSIDE_IP} --count {probes}",
            "source": "c1",
            "destination": OUTSIDE_IP,
        },
    )


DNAT_REQUEST_HOPS = [
    _Hop(OUTSIDE_SOURCE, None, True),
    _Hop(UPLINK, "veth", False),
    _Hop(DOCKER0, "route", True),
    _Hop(WEB_VETH, "bridge", True),
    _Hop(WEB_ETH0, "veth", False),
]


def dnat_walk(probes: int = 1, seed: int = 3) -> Trace:
    """`flowtrace tcp netns:outside 203.0.113.1:8080`: the published port 8080 -> web:80.

    The SYN's destination is rewritten between host/ft-uplink and host/docker0; the SYN-ACK's
    source is put back on the way out (the reverse of the DNAT).
    """
    timing = _Timing(seed)
    frames = _FrameCounter()
    reply_hops = _reversed_hops(DNAT_REQUEST_HOPS)
    packets: list[Packet] = []
    verdicts: list[Verdict] = []
    for probe in range(probes):
        sport = 40000 + probe
        conntrack = (
            f"tcp      6 119 SYN_RECV src={OUTSIDE_IP} dst={UPLINK_IP} sport={sport} dport=8080 "
            f"src={WEB_IP} dst={OUTSIDE_IP} sport=80 dport={sport} mark=0 use=1"
        )
        dnat = NatEvent(
            kind="DNAT",
            between=(UPLINK.id, DOCKER0.id),
            before=Address(UPLINK_IP, 8080),
            after=Address(WEB_IP, 80),
            rule=DNAT_RULE,
            conntrack=conntrack,
        )
        un_dnat = NatEvent(
            kind="SNAT",
            between=(DOCKER0.id, UPLINK.id),
            before=Address(WEB_IP, 80),
            after=Address(UPLINK_IP, 8080),
            rule=DNAT_RULE,
            conntrack=conntrack,
            reverse_of="DNAT",
        )
        start = EPOCH_NS + probe * PROBE_INTERVAL_NS + timing.jitter_ns()
        isn = timing.rng.randrange(2**32)
        outside = Headers(
            version=4,
            src=OUTSIDE_IP,
            dst=UPLINK_IP,
            proto=TCP,
            ip_id=timing.rng.randrange(65536),
            ttl=64,
            length=60,
            sport=sport,
            dport=8080,
            tcp_seq=isn,
            tcp_ack=0,
            tcp_flags=SYN,
        )
        inside = outside._replace(dst=WEB_IP, dport=80, ttl=63)
        hops = list(DNAT_REQUEST_HOPS)
        if probe == 0:
            hops[2] = replace(hops[2], link="nat-new")
        req = _walk(timing, frames, start, hops, [outside, outside, inside, inside, inside])
        packets.append(Packet(2 * probe + 1, "request", req, nat=(dnat,), probe=probe))

        answer = Headers(
            version=4,
            src=WEB_IP,
            dst=OUTSIDE_IP,
            proto=TCP,
            ip_id=0,  # Linux sends SYN-ACKs with DF and IP ID 0
            ttl=64,
            length=60,
            sport=80,
            dport=sport,
            tcp_seq=timing.rng.randrange(2**32),
            tcp_ack=(isn + 1) % 2**32,
            tcp_flags=SYN_ACK,
        )
        leaving = answer._replace(src=UPLINK_IP, sport=8080, ttl=63)
        rep = _walk(
            timing,
            frames,
            req[-1].time_ns,
            reply_hops,
            [answer, answer, answer, leaving, leaving],
            first_link="accept",
        )
        packets.append(Packet(2 * probe + 2, "reply", rep, nat=(un_dnat,), probe=probe))
        verdicts.append(
            Verdict(probe, "replied", detail="SYN-ACK", rtt_ns=rep[-1].time_ns - req[0].time_ns)
        )
    return Trace(
        points=tuple(h.point for h in DNAT_REQUEST_HOPS),
        packets=tuple(packets),
        verdicts=tuple(verdicts),
        meta={
            "command": f"flowtrace tcp netns:outside {UPLINK_IP}:8080 --count {probes}",
            "source": "netns:outside",
            "destination": f"{UPLINK_IP}:8080",
        },
    )


def empty_trace() -> Trace:
    """A trace that saw nothing: the points exist, no packet was captured."""
    return Trace(points=tuple(h.point for h in PING_REQUEST_HOPS), packets=())
