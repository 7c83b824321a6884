"""The DNS lookup's values: where a namespace's resolver looks and what a traced lookup
found (`flowtrace dns`, run.dns; output.dnsview and output.jsonout show them).

Like the rest of flowtrace.model: frozen dataclasses, no I/O, nothing imported but
the model itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flowtrace.model import Address, Endpoint, NatEvent, Packet, Point, PointStats

#: The port a resolver asks a DNS server on.
DNS_PORT = 53


@dataclass(frozen=True)
class ResolverConfig:
    """Where a namespace's resolver looks: the files and the servers they name."""

    resolv_conf: str  # the file, as the host sees it
    hosts_file: str
    nameservers: tuple[str, ...]
    #: Where the files come from, in words ("c3's /etc/resolv.conf").
    described_as: str


@dataclass(frozen=True)
class DnsLookup:
    """A traced lookup: what was asked, of whom, which way it went, and the answer."""

    src: Endpoint
    name: str
    qtype: str
    config: ResolverConfig
    #: The server asked.
    server: str
    #: An answer taken from the hosts file: no packet was sent.
    hosts_answer: str | None = None
    points: tuple[Point, ...] = ()
    #: The query and answer as sent and received by the socket.
    sent_from: Address | None = None
    query: Packet | None = None
    answer: Packet | None = None
    #: Rewrites that happened before the first point (the nat OUTPUT chain) or after the
    #: server answered (conntrack putting the source back): between[0] is "SRC socket".
    nat: tuple[NatEvent, ...] = ()
    #: The process that owns the server's socket, where the query was delivered.
    server_process: str | None = None
    server_socket: Address | None = None
    rcode: str | None = None
    records: tuple[str, ...] = ()
    rtt_ns: int | None = None
    #: Why no answer came when the network said so (an ICMP error), in words.
    error: str | None = None
    packets: tuple[Packet, ...] = ()
    stats: tuple[PointStats, ...] = ()
    notes: tuple[str, ...] = ()
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def write_error(self) -> str | None:
        error = self.meta.get("write_error")
        return str(error) if error else None

    @property
    def answered(self) -> bool:
        return self.hosts_answer is not None or self.rcode is not None

    @property
    def interrupted(self) -> bool:
        return bool(self.meta.get("interrupted"))
