"""The data model every stage speaks: plain frozen dataclasses and named tuples, no I/O.

The flow is endpoints -> topology (Points) -> capture (Frames) -> decode (Sightings)
-> correlate (Packets with NatEvents) -> Trace -> outputs; flowtrace.model.dns holds
what a DNS lookup finds.  Nothing here imports anything but the standard library and
flowtrace.errors, so notebooks and unit tests can build these objects from recorded data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Literal, NamedTuple

from flowtrace.errors import FlowtraceError

Direction = Literal["request", "reply"]
#: What a trace sends: ICMP echo, a TCP SYN or a UDP datagram.
ProbeKind = Literal["icmp", "tcp", "udp"]
NatKind = Literal["SNAT", "DNAT"]

#: Roles a point can play on a path, in the words the terminal view uses.
ROLES = (
    "source",  # the interface the probe leaves from (inside the source namespace)
    "veth-peer",  # host side of a veth pair
    "bridge",  # a Linux bridge (docker0, br-xxxx); captured in promiscuous mode
    "egress",  # a routed exit interface of a namespace (e.g. the uplink)
    "destination",  # the interface where the packet is delivered
    "loopback",  # traffic inside one namespace
    "named",  # a point the user named by hand (capture --point)
)


def split_host(path: str) -> tuple[str | None, str]:
    """("hostb", "/proc/812/ns/net") for a namespace on another host, (None, path) here.

    A namespace on another host is named by its path there with the host in front,
    "hostb:/proc/812/ns/net"; a path on this host starts with "/".
    """
    if path.startswith("/"):
        return None, path
    host, sep, rest = path.partition(":")
    if sep and host and rest.startswith("/"):
        return host, rest
    return None, path


@dataclass(frozen=True)
class Namespace:
    """A network namespace flowtrace can enter: the path of its nsfs file.

    `label` is what people call it ("c1", "host", "netns:lab", "pid:42", and on another
    host "c2@hostb", "host@hostb"); `inode` identifies it on its host (two paths may name
    the same namespace; two hosts may number theirs alike, so `key` holds both).
    """

    path: str
    label: str
    inode: int = 0
    container: str | None = None

    @property
    def host(self) -> str | None:
        """The host it is on (as the endpoint named it: `c2@hostb` -> "hostb"); None: here.

        A recorded namespace (no path: it cannot be entered) says it by its label."""
        if not self.path and "@" in self.label:
            return self.label.rsplit("@", 1)[1]
        return split_host(self.path)[0]

    @property
    def key(self) -> tuple[str | None, int]:
        """Its identity across hosts: (host, inode)."""
        return self.host, self.inode

    @property
    def base_label(self) -> str:
        """The label without its host: "host" for "host@hostb"."""
        host = self.host
        if host and self.label.endswith(f"@{host}"):
            return self.label[: -len(host) - 1]
        return self.label

    @property
    def is_host(self) -> bool:
        """The host's own namespace (this host's or another's)."""
        return self.base_label == "host"


@dataclass(frozen=True)
class Endpoint:
    """What the user typed, resolved to a namespace and the addresses it owns."""

    spec: str
    netns: Namespace
    addresses: tuple[str, ...] = ()
    #: The address other endpoints should send to (first non-loopback IPv4; for an
    #: endpoint typed as an address, that address).
    ip: str | None = None
    #: Transport port given with the spec (``c2:80``), if any.
    port: int | None = None
    #: Docker facts worth showing: network mode, networks, state.
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Point:
    """One place a packet can be observed: an interface inside a namespace."""

    id: str  # "c1/eth0", "host/docker0", "host/veth1a2b3c"
    netns: Namespace
    ifname: str
    ifindex: int
    role: str
    #: Bridges forward frames to a packet socket only when in promiscuous mode.
    promisc: bool = False
    #: Link-layer type of the interface (pcap LINKTYPE_*; 1 = Ethernet).
    linktype: int = 1
    mac: str | None = None
    addresses: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        """The pcapng if_description: host (when not this one), namespace, container, role."""
        parts = [f"host={self.netns.host}"] if self.netns.host else []
        parts.append(f"netns={self.netns.label}")
        if self.netns.container:
            parts.append(f"container={self.netns.container}")
        parts.append(f"role={self.role}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Frame:
    """A raw frame as the kernel handed it to a capture socket."""

    point: int  # index into the list of points of the capture
    time_ns: int  # kernel timestamp, ns since the epoch
    data: bytes
    orig_len: int
    #: True when the kernel says the frame was sent by this interface
    #: (PACKET_OUTGOING), False when received, None when unknown.
    outbound: bool | None = None


class Headers(NamedTuple):
    """The IP and transport fields correlation and NAT diffs need.

    Ports are None where the protocol has none; for ICMP echo the identifier
    plays the part of a port (NAT rewrites it like one) and is kept in icmp_id.

    A named tuple rather than a frozen dataclass: `flowtrace analyze` makes one per
    frame of captures of millions, and a tuple is built in a fifth of the time
    (`h._replace(...)` makes a changed copy).
    """

    version: int
    src: str
    dst: str
    proto: int  # IP protocol number (1 ICMP, 6 TCP, 17 UDP, 58 ICMPv6)
    ip_id: int
    ttl: int
    length: int  # IP total length
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    icmp_seq: int | None = None
    tcp_seq: int | None = None
    tcp_ack: int | None = None
    tcp_flags: int | None = None
    #: Digest of the transport payload: NAT never rewrites it.
    payload_digest: bytes = b""
    #: For ICMP errors: the headers of the packet the error quotes.
    inner: Headers | None = None
    #: For a packet seen inside a tunnel (VXLAN on an overlay's underlay): the outer
    #: headers it travelled in; the fields above are the inner packet's.
    outer: Tunnel | None = None

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.proto) or str(self.proto)

    @property
    def kind(self) -> str:
        """What the packet is, for per-hop latency: "TCP SYN", "TCP RST", "ICMP echo reply".

        Hop times differ by kind (the first packet of a connection makes conntrack and
        NAT set up state; a RST may be sent by another stack than the SYN's), so each
        kind gets its own statistics.  TCP segments without SYN, FIN or RST (data and
        acknowledgements) are "TCP ACK".
        """
        proto = self.proto
        if proto == 6:
            flags = self.tcp_flags or 0
            if flags & 0x04:
                return "TCP RST"
            if flags & 0x02:
                return "TCP SYN-ACK" if flags & 0x10 else "TCP SYN"
            if flags & 0x01:
                return "TCP FIN"
            return "TCP ACK"
        if proto in ICMP_KINDS:
            prefix = "ICMP" if proto == 1 else "ICMPv6"
            if self.icmp_type is None:
                return prefix
            return f"{prefix} {ICMP_KINDS[proto].get(self.icmp_type) or f'type {self.icmp_type}'}"
        return self.proto_name.upper()


class Tunnel(NamedTuple):
    """The outer headers of an encapsulated packet: a VXLAN datagram between two hosts'
    tunnel endpoints (VTEPs) and the network identifier (VNI) it carries."""

    kind: str  # "vxlan"
    src: str
    dst: str
    sport: int
    dport: int
    vni: int
    ttl: int
    ip_id: int

    @property
    def label(self) -> str:
        return f"VXLAN vni {self.vni} {self.src}:{self.sport} -> {self.dst}:{self.dport}"


#: Names of the IP protocols flowtrace shows by name (others show as their number).
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6"}
#: ICMP and ICMPv6 types flowtrace names, by protocol number.
ICMP_KINDS = {
    1: {8: "echo request", 0: "echo reply", 3: "unreachable", 11: "time exceeded"},
    58: {
        128: "echo request",
        129: "echo reply",
        1: "unreachable",
        2: "packet too big",
        3: "time exceeded",
        135: "neighbor solicitation",
        136: "neighbor advertisement",
    },
}
#: The echo request and reply types of ICMP (protocol 1) and ICMPv6 (58).
ICMP_ECHO_REQUEST = {1: 8, 58: 128}
ICMP_ECHO_REPLY = {1: 0, 58: 129}
#: The types whose body quotes the packet they answer: unreachable (and too big), time
#: exceeded, parameter problem.
ICMP_ERRORS = {1: frozenset((3, 4, 5, 11, 12)), 58: frozenset((1, 2, 3, 4))}


def is_echo_request(h: Headers) -> bool:
    """An ICMP or ICMPv6 echo request."""
    return h.icmp_type is not None and ICMP_ECHO_REQUEST.get(h.proto) == h.icmp_type


def is_echo_reply(h: Headers) -> bool:
    """An ICMP or ICMPv6 echo reply."""
    return h.icmp_type is not None and ICMP_ECHO_REPLY.get(h.proto) == h.icmp_type


def is_icmp_error(h: Headers) -> bool:
    """An ICMP or ICMPv6 error (it quotes the packet it is about)."""
    return h.icmp_type is not None and h.icmp_type in ICMP_ERRORS.get(h.proto, ())


def ip_version(address: str) -> int:
    """4 or 6, from an address's text (an IPv6 address has colons)."""
    return 6 if ":" in address else 4


class Sighting(NamedTuple):
    """One packet seen at one point: where, when, and what its headers said there.

    A named tuple for the reason Headers is one: one is made per frame.
    """

    point: str  # Point.id
    time_ns: int
    headers: Headers
    outbound: bool | None = None
    #: Position of the frame in its capture (file order), to find it again.
    frame_index: int = -1

    @property
    def src(self) -> str:
        return self.headers.src

    @property
    def dst(self) -> str:
        return self.headers.dst

    @property
    def sport(self) -> int | None:
        return self.headers.sport

    @property
    def dport(self) -> int | None:
        return self.headers.dport


@dataclass(frozen=True)
class Address:
    """An address and a port (or ICMP id) as NAT sees them."""

    ip: str
    port: int | None = None

    def __str__(self) -> str:
        if self.port is None:
            return self.ip
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class NatEvent:
    """An address rewrite seen between two neighbouring sightings of one packet."""

    kind: NatKind
    between: tuple[str, str]  # (point before, point after)
    before: Address
    after: Address
    #: The iptables/nftables rule responsible, as iptables-save prints it.
    rule: str | None = None
    #: The kernel's conntrack entry for the flow, as conntrack -L prints it.
    conntrack: str | None = None
    #: Set on a reply's rewrite that undoes the request's translation
    #: (a MASQUERADEd request's reply has its destination put back: DNAT, reverse_of SNAT).
    reverse_of: NatKind | None = None
    #: Why `rule` may not be the one (a match flowtrace cannot evaluate); None: certain.
    rule_doubt: str | None = None
    #: What the rule means in its engine's terms (Docker's, Podman's), when known.
    explanation: str | None = None

    @property
    def label(self) -> str:
        """How the rewrite reads to a person: "SNAT 172.17.0.2 -> 203.0.113.1".

        Ports (or ICMP ids) are shown only when the rewrite changed them, since
        MASQUERADE usually keeps them and repeating them hides the address change.  A
        reply's rewrite that undoes the request's translation says so.
        """
        if self.before.port == self.after.port:
            before, after = self.before.ip, self.after.ip
        else:
            before, after = str(self.before), str(self.after)
        text = f"{self.kind} {before} -> {after}"
        return f"{text} (reverses {self.reverse_of})" if self.reverse_of else text


@dataclass(frozen=True)
class Packet:
    """All sightings of one packet, in path order, and the rewrites between them."""

    packet_id: int
    direction: Direction
    sightings: tuple[Sighting, ...]
    nat: tuple[NatEvent, ...] = ()
    #: Index of the probe this packet belongs to (a trace), or None (a capture).
    probe: int | None = None

    @property
    def first(self) -> Sighting:
        return self.sightings[0]

    @property
    def last(self) -> Sighting:
        return self.sightings[-1]

    def hop_deltas_ns(self) -> list[int]:
        """Time from each sighting to the next, in path order."""
        s = self.sightings
        return [b.time_ns - a.time_ns for a, b in pairwise(s)]


#: What went wrong around a run, as Fault.kind says it.
FaultKind = Literal[
    "container-stopped",  # died, was killed or stopped (exit code known)
    "container-restarted",  # came back with a new namespace: the watched one is gone
    "container-removed",
    "container-paused",
    "engine-gone",  # the engine's event stream ended: later container events are unknown
    "interface-gone",  # a point's interface was deleted
    "netns-gone",  # a namespace (netns:NAME, pid:N) went away
]


@dataclass(frozen=True)
class Fault:
    """Something that broke the path during a run: when, what, and the points it took."""

    time_ns: int  # ns since the epoch, the clock probes and frames are stamped with
    kind: FaultKind
    #: The container, point or namespace it happened to ("c2", "host/veth1a2b", "netns:x").
    subject: str
    #: In words, without the time: "c2 stopped (exit 137)".
    text: str
    #: Points of the path it took away (a container's eth0 and its veth peer...).
    points: tuple[str, ...] = ()
    exit_code: int | None = None


@dataclass(frozen=True)
class Verdict:
    """What became of one probe."""

    probe: int
    outcome: Literal["replied", "delivered", "lost", "refused", "unreachable"]
    #: For "lost": the last point the request was seen at.
    last_point: str | None = None
    #: Free words: the reply kind, the rule that dropped it, an ICMP error.
    detail: str = ""
    rtt_ns: int | None = None
    #: The firewall rule that dropped the probe or its answer, as the system prints it.
    rule: str | None = None
    #: What broke the path while the probe was out or before it (its words lead `detail`).
    fault: Fault | None = None

    @property
    def answered(self) -> bool:
        """The destination answered: a reply, or a refusal (RST, ICMP port unreachable)."""
        return self.outcome in ("replied", "refused")

    def __str__(self) -> str:
        if self.fault is not None and not self.answered:
            return f"{'lost' if self.outcome == 'lost' else self.outcome}: {self.detail}"
        if self.outcome == "lost":
            where = f" after {self.last_point}" if self.last_point else " before the first point"
            text = f"lost{where}"
        elif self.outcome == "delivered":
            text = "delivered without reply"
        else:
            text = self.outcome
        return f"{text} ({self.detail})" if self.detail else text


@dataclass(frozen=True)
class DropReason:
    """Why a packet went no further: the rule that dropped it (None: no rule did, the
    kernel's state says why) and the verdict's words."""

    rule: str | None
    text: str


@dataclass(frozen=True)
class PointStats:
    """Kernel counters of one capture socket."""

    point: str
    packets: int = 0
    drops: int = 0
    #: Bytes on the wire (original lengths) of the captured packets.
    bytes: int = 0


@dataclass(frozen=True)
class Trace:
    """One trace or one analysed capture: what was watched and what was seen."""

    points: tuple[Point, ...]
    packets: tuple[Packet, ...]
    verdicts: tuple[Verdict, ...] = ()
    stats: tuple[PointStats, ...] = ()
    #: Command, endpoints, versions, the pcap set's path: what manifest.json holds.
    meta: dict[str, object] = field(default_factory=dict)
    #: Plain sentences for the user: mode of a container, why there is no path...
    notes: tuple[str, ...] = ()
    #: What broke the path during the run (a container stopped, an interface went away).
    faults: tuple[Fault, ...] = ()

    @property
    def interrupted(self) -> bool:
        """Ctrl-C (or SIGTERM) ended the run before it was done."""
        return bool(self.meta.get("interrupted"))

    @property
    def write_error(self) -> str | None:
        """Why the pcap set could not be written to its end (a full disk...), if so."""
        error = self.meta.get("write_error")
        return str(error) if error else None

    @property
    def answered(self) -> bool:
        """Every probe was answered (a reply or a refusal); vacuously true for a capture."""
        return all(v.answered for v in self.verdicts)

    def point(self, point_id: str) -> Point:
        for p in self.points:
            if p.id == point_id:
                return p
        raise KeyError(point_id)

    def hop_deltas(self) -> dict[tuple[str, str, str, str], list[int]]:
        """(direction, packet kind, from point, to point) -> each packet's time for that hop,
        in ns.  A TCP probe's SYN and the RST after it are both requests but separate rows:
        conntrack and NAT set up state for the first only."""
        hops: dict[tuple[str, str, str, str], list[int]] = {}
        for pkt in self.packets:
            kind = pkt.first.headers.kind
            for a, b in pairwise(pkt.sightings):
                key = (pkt.direction, kind, a.point, b.point)
                hops.setdefault(key, []).append(b.time_ns - a.time_ns)
        return hops

    @property
    def nat_events(self) -> list[NatEvent]:
        return [ev for pkt in self.packets for ev in pkt.nat]


#: What `--rules` may name: flowtrace's reading of the rules, or the kernel's trace too.
RULES_SOURCES = ("model", "kernel")


@dataclass(frozen=True)
class TraceOptions:
    """Everything a trace needs to know, converted from CLI flags or notebook arguments."""

    kind: ProbeKind = "icmp"
    count: int = 1
    interval: float = 0.2
    timeout: float = 2.0
    output_dir: Path | None = None  # the pcap set folder; None: captures/<time>-<src>-<dst>/
    record: bool = True  # write a pcap set at all
    command: str = ""
    #: 4 or 6 (`-4`/`-6`); None: the family the destination's addresses rank first.
    family: int | None = None
    #: Where the rules shown come from: "model" (flowtrace reads and walks them) or
    #: "kernel" (also the kernel's own nftables trace of the probes: run.kernel_word).
    rules: str = "model"

    def check(self) -> None:
        if self.rules not in RULES_SOURCES:
            raise FlowtraceError(
                f"bad --rules {self.rules!r}: give one of {', '.join(RULES_SOURCES)}"
            )
        if self.count < 1:
            raise FlowtraceError(f"bad count {self.count}: send at least one probe")
        if self.interval < 0:
            raise FlowtraceError(f"bad interval {self.interval}: it cannot be negative")
        if self.timeout <= 0:
            raise FlowtraceError(f"bad timeout {self.timeout}: it must be positive")
        if self.family not in (None, 4, 6):
            raise FlowtraceError(f"bad address family {self.family}: give 4 or 6")
