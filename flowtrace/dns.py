"""`flowtrace dns SRC NAME`: one name lookup, followed from the source's resolver config
to the answer.

A lookup starts from the files the source's resolver reads: its /etc/hosts (a name
found there never becomes a packet) and its /etc/resolv.conf (the server to ask).  On
a user-defined Docker network that server is 127.0.0.11, Docker's embedded DNS: a
socket dockerd opened inside the container's own namespace on a random port, reached
through a DNAT rule Docker put in that namespace's nat OUTPUT chain.  The rewrite
happens before the packet reaches any interface (lo included), so it shows only as
the difference between what the socket sent and what lo carried; the answer's source
port is put back by conntrack on the way out, before lo too.

The query is sent from a real UDP socket in the source namespace (the resolver's own
path), captured on every point of the path to the server with the trace's capture
engine, and written as a pcap set like a trace's.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flowtrace.errors import ExitStatus, FlowtraceError, NoPathError
from flowtrace.model import Address, Endpoint, Frame, NatEvent, Packet, Point, PointStats, Sighting

DNS_PORT = 53
#: Docker's embedded DNS server, inside every container on a user-defined network.
DOCKER_DNS = "127.0.0.11"
SETTLE_S = 0.05
RETIRE_MS = 4


@dataclass(frozen=True)
class ResolverConfig:
    """Where the source's resolver looks: the files and the servers they name."""

    resolv_conf: str  # the file, as the host sees it
    hosts_file: str
    nameservers: tuple[str, ...]
    #: Where the files come from, in words ("c3's /etc/resolv.conf (Docker's copy)").
    described_as: str


@dataclass(frozen=True)
class DnsLookup:
    """A traced lookup: what was asked, of whom, which way it went, and the answer."""

    src: Endpoint
    name: str
    qtype: str
    config: ResolverConfig
    #: The server asked and how it was chosen.
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
    def answered(self) -> bool:
        return self.hosts_answer is not None or self.rcode is not None


# --- pure helpers -----------------------------------------------------------------------


def parse_nameservers(text: str) -> tuple[str, ...]:
    """The `nameserver` lines of a resolv.conf, in order (read by dnspython)."""
    import io

    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    try:
        resolver.read_resolv_conf(io.StringIO(text))
    except dns.resolver.NoResolverConfiguration:
        return ()
    return tuple(str(ns) for ns in resolver.nameservers)


def hosts_lookup(text: str, name: str) -> str | None:
    """The address /etc/hosts gives `name`, IPv4 first, or None."""
    found: list[str] = []
    wanted = name.rstrip(".").lower()
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and wanted in (f.lower() for f in fields[1:]):
            found.append(fields[0])
    found.sort(key=lambda ip: ":" in ip)
    return found[0] if found else None


def query_rewrite(
    label: str, sent_to: Address, seen: Sighting, first_point: str
) -> NatEvent | None:
    """The DNAT between the socket and the first point, if the destination changed."""
    h = seen.headers
    after = Address(h.dst, h.dport)
    if after == sent_to:
        return None
    return NatEvent("DNAT", (f"{label} socket", first_point), sent_to, after)


def answer_rewrite(
    label: str, server_socket: Address, seen: Sighting, first_point: str
) -> NatEvent | None:
    """Conntrack putting the answer's source back to the address the query was sent to."""
    h = seen.headers
    after = Address(h.src, h.sport)
    if after == server_socket:
        return None
    return NatEvent(
        "SNAT", (f"{label} socket", first_point), server_socket, after, reverse_of="DNAT"
    )


# --- the resolver configuration ----------------------------------------------------------


def resolver_config(src: Endpoint) -> ResolverConfig:
    """The resolv.conf and hosts files the source's resolver reads."""
    ns = src.netns
    if ns.container:
        from flowtrace.endpoints.docker import inspect_container

        info = inspect_container(ns.container)
        resolv, hosts = info.resolv_conf, info.hosts_file
        where = f"{ns.container}'s /etc/resolv.conf"
    elif ns.label.startswith("netns:"):
        name = ns.label.split(":", 1)[1]
        own = f"/etc/netns/{name}/resolv.conf"
        resolv = own if os.path.exists(own) else "/etc/resolv.conf"
        own_hosts = f"/etc/netns/{name}/hosts"
        hosts = own_hosts if os.path.exists(own_hosts) else "/etc/hosts"
        where = resolv
    elif ns.label.startswith("pid:"):
        root = f"/proc/{ns.label.split(':', 1)[1]}/root"
        resolv, hosts = f"{root}/etc/resolv.conf", f"{root}/etc/hosts"
        where = f"{ns.label}'s /etc/resolv.conf"
    else:
        resolv, hosts, where = "/etc/resolv.conf", "/etc/hosts", "/etc/resolv.conf"
    try:
        servers = parse_nameservers(Path(resolv).read_text()) if resolv else ()
    except OSError as exc:
        raise FlowtraceError(f"cannot read {where} ({resolv}): {exc.strerror}") from None
    return ResolverConfig(resolv, hosts, servers, where)


def _hosts_text(config: ResolverConfig) -> str:
    try:
        return Path(config.hosts_file).read_text() if config.hosts_file else ""
    except OSError:
        return ""


def _outside_explanation(src: Endpoint, name: str, config: ResolverConfig, server: str) -> str:
    """Why flowtrace will not send this lookup, and what the source can resolve instead."""
    text = (
        f"{src.spec}'s resolver is {server} ({config.described_as}), an address no namespace "
        "on this machine owns: flowtrace sends nothing outside its namespaces"
    )
    if src.netns.container:
        from flowtrace.endpoints.docker import inspect_container

        info = inspect_container(src.netns.container)
        if set(info.addresses) <= {"bridge"}:
            text += (
                f". {src.spec} is on the default bridge, where Docker runs no embedded DNS: "
                "containers there find each other by IP, not by name"
            )
            target = _container_address(name)
            if target:
                text += f" ({name} is at {target})"
            text += "; on a user-defined network (docker network create) names resolve"
    return text


def _container_address(name: str) -> str | None:
    from flowtrace.endpoints.docker import docker_available, running_containers

    if not docker_available():
        return None
    for c in running_containers():
        if c.name == name and c.addresses:
            return ", ".join(f"{ip} on {net}" for net, ip in c.addresses.items())
    return None


# --- the lookup ---------------------------------------------------------------------------


def lookup(
    src_spec: str,
    name: str,
    qtype: str = "A",
    server: str | None = None,
    timeout: float = 2.0,
    output_dir: str | Path | None = None,
    record: bool = True,
    command: str = "",
) -> DnsLookup:
    """Resolve `name` from `src_spec` the way its resolver would, and follow the packets."""
    import dns.exception
    import dns.name
    import dns.rdatatype

    from flowtrace.endpoints.resolve import resolve

    try:
        dns.name.from_text(name)
    except (dns.exception.DNSException, ValueError) as exc:
        raise FlowtraceError(f"bad name {name!r}: {exc}", ExitStatus.USAGE) from None
    try:
        dns.rdatatype.from_text(qtype)
    except dns.exception.DNSException:
        raise FlowtraceError(
            f"bad record type {qtype!r}: give one such as A, AAAA, MX, TXT", ExitStatus.USAGE
        ) from None
    if timeout <= 0:
        raise FlowtraceError(f"bad timeout {timeout}: it must be positive", ExitStatus.USAGE)
    src = resolve(src_spec)
    config = resolver_config(src)
    if server is None:
        in_hosts = hosts_lookup(_hosts_text(config), name)
        if in_hosts is not None and qtype.upper() in ("A", "AAAA"):
            note = (
                f"{name} is in {src.spec}'s /etc/hosts ({config.hosts_file}): "
                "the resolver answers from the file and sends no packet"
            )
            return DnsLookup(
                src, name, qtype.upper(), config, "", hosts_answer=in_hosts, notes=(note,)
            )
        if not config.nameservers:
            raise NoPathError(f"{config.described_as} names no nameserver: nothing to ask")
        server = config.nameservers[0]
    return _DnsTracer(src, name, qtype.upper(), config, server, timeout, command).run(
        Path(output_dir) if output_dir is not None else None, record
    )


class _DnsTracer:
    def __init__(
        self,
        src: Endpoint,
        name: str,
        qtype: str,
        config: ResolverConfig,
        server: str,
        timeout: float,
        command: str,
    ) -> None:
        self.src, self.name, self.qtype, self.config = src, name, qtype, config
        self.server, self.timeout = server, timeout
        self.command = command or f"flowtrace dns {src.spec} {name}"
        self.notes: list[str] = []
        #: What the socket reported instead of an answer (an ICMP error), if anything.
        self.socket_error: str | None = None

    # --- planning -------------------------------------------------------------------------

    def _plan(self) -> tuple[list[Point], Endpoint | None]:
        """The points between the source and the server, and the server's endpoint."""
        import ipaddress

        from flowtrace.endpoints.resolve import resolve_ip
        from flowtrace.errors import NotFoundError
        from flowtrace.topology.path import LiveView, plan_path

        try:
            address = ipaddress.ip_address(self.server)
        except ValueError:
            raise FlowtraceError(
                f"bad server {self.server!r}: give an IP address", ExitStatus.USAGE
            ) from None
        if address.version != 4:
            raise FlowtraceError(
                f"the resolver {self.server} is IPv6: flowtrace follows IPv4 lookups only",
                ExitStatus.NO_PATH,
            )
        view = LiveView([self.src.netns])
        route = view.route(self.src.netns, self.server)
        if route.local:
            plan = plan_path(view, self.src.netns, self.server, DNS_PORT)
            return plan.points, self.src
        try:
            owner = resolve_ip(self.server, port=DNS_PORT)
        except NotFoundError:
            raise NoPathError(
                _outside_explanation(self.src, self.name, self.config, self.server)
            ) from None
        view = LiveView([self.src.netns, owner.netns])
        plan = plan_path(view, self.src.netns, self.server, DNS_PORT)
        self.notes += plan.notes
        if not plan.points:
            raise NoPathError(f"no path from {self.src.spec} to its resolver {self.server}")
        return plan.points, owner

    # --- the run ----------------------------------------------------------------------------

    def run(self, output_dir: Path | None, record: bool) -> DnsLookup:
        import dns.message

        from flowtrace.capture.session import CaptureSession
        from flowtrace.endpoints.netns import run_in_netns

        points, owner = self._plan()
        server_ns = owner.netns if owner is not None else self.src.netns
        if self.server == DOCKER_DNS and self.src.netns.container:
            self.notes.append(
                f"{DOCKER_DNS} is Docker's embedded DNS: dockerd answers inside "
                f"{self.src.spec}'s own namespace for the names of containers on its "
                "user-defined networks, and forwards other names to the host's resolvers"
            )
        sock = run_in_netns(self.src.netns.path, _udp_socket, self.server)
        try:
            src_ip, sport = sock.getsockname()[:2]
            sent_from = Address(src_ip, sport)
            session = CaptureSession(
                points,
                f"udp port {sport} or icmp[icmptype] == icmp-unreach "
                "or icmp[icmptype] == icmp-timxceed",
                None,
                keep_frames=True,
                workers=0,
                ring_mb=2,
                retire_ms=RETIRE_MS,
            )
            query = dns.message.make_query(self.name, self.qtype)
            query.id = secrets.randbelow(0x10000)
            wire = query.to_wire()
            interrupted = False
            reply_wire: bytes | None = None
            sent_ns = received_ns = 0
            session.start()  # every point is capturing from here on
            try:
                sent_ns = time.time_ns()
                sock.send(wire)
                reply_wire, received_ns, self.socket_error = _receive(sock, query.id, self.timeout)
                if self.socket_error:
                    self._settle(session, len(points), answered=True)
                self._settle(session, len(points), answered=reply_wire is not None)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                session.stop()
                stats = tuple(session.snapshot())
                frames = session.frames()
        finally:
            sock.close()
        packets = self._correlate(points, frames)
        result = self._result(
            points, packets, stats, sent_from, server_ns, reply_wire, sent_ns, received_ns
        )
        if record:
            path = self._record(output_dir, points, frames, result, interrupted)
            result.meta["pcap"] = str(path)
        result.meta["interrupted"] = interrupted
        return result

    def _settle(self, session: Any, points: int, answered: bool) -> None:
        """Let every ring hand over the query's and the answer's frames."""
        deadline = time.monotonic() + SETTLE_S
        while answered and time.monotonic() < deadline:
            seen = {f.point for f in session.frames()}
            if len(seen) == points:
                break
            time.sleep(0.002)
        time.sleep(2 * RETIRE_MS / 1000)

    def _correlate(self, points: Sequence[Point], frames: Sequence[Frame]) -> list[Packet]:
        from flowtrace.correlate.decode import decode_frame
        from flowtrace.correlate.match import correlate
        from flowtrace.tracer import attribute_nat

        ids = [p.id for p in points]
        sightings = []
        for i, f in enumerate(frames):
            headers = decode_frame(f.data, points[f.point].linktype)
            if headers is not None:
                sightings.append(Sighting(ids[f.point], f.time_ns, headers, f.outbound, i))
        sightings.sort(key=lambda s: s.time_ns)
        packets = [replace(p, packet_id=n) for n, p in enumerate(correlate(sightings, ids), 1)]
        return attribute_nat(packets, points)  # rewrites between points: rule and entry

    def _result(
        self,
        points: list[Point],
        packets: list[Packet],
        stats: tuple[PointStats, ...],
        sent_from: Address,
        server_ns: Any,
        reply_wire: bytes | None,
        sent_ns: int,
        received_ns: int,
    ) -> DnsLookup:
        label = self.src.netns.label
        sent_to = Address(self.server, DNS_PORT)
        ours = (sent_from.ip, sent_from.port)
        query = next((p for p in packets if _sent_from(p, ours)), None)
        answer = next((p for p in packets if _sent_to(p, ours)), None)
        error = self.socket_error
        if answer is None and reply_wire is None:
            answer = next((p for p in packets if _icmp_error_about(p, ours)), None)
            if answer is not None:
                from flowtrace.tracer import icmp_error_text

                h = answer.last.headers
                error = f"{icmp_error_text(h)} from {h.src}"
                if h.icmp_type == 3 and h.icmp_code == 3:
                    error += f": nothing listens on {self.server}:{DNS_PORT}/udp"
        if answer is not None:
            reply = replace(answer, direction="reply")
            packets = [reply if p is answer else p for p in packets]
            answer = reply
        nat: list[NatEvent] = []
        server_socket = sent_to
        if query is not None:
            ev = query_rewrite(label, sent_to, query.first, query.first.point)
            if ev is not None:
                ev = self._explain(ev, points[0], sent_from)
                nat.append(ev)
            last = query.last.headers  # where it was delivered, after every rewrite
            server_socket = Address(last.dst, last.dport)
        if answer is not None:
            ev = answer_rewrite(label, server_socket, answer.first, answer.first.point)
            if ev is not None and nat:  # the query's rule and entry explain it
                ev = replace(ev, rule=nat[0].rule, conntrack=nat[0].conntrack)
            if ev is not None:
                nat.append(ev)
        owner = None
        if query is not None:
            from flowtrace.endpoints.sockets import find_socket_owner

            try:
                found = find_socket_owner(
                    server_ns.path, "udp", server_socket.ip, server_socket.port or 0
                )
            except (FlowtraceError, OSError):
                found = None
            owner = str(found) if found is not None else None
        rcode: str | None = None
        records: tuple[str, ...] = ()
        if reply_wire is not None:
            rcode, records = _read_answer(reply_wire)
        return DnsLookup(
            self.src,
            self.name,
            self.qtype,
            self.config,
            self.server,
            points=tuple(points),
            sent_from=sent_from,
            query=query,
            answer=answer,
            nat=tuple(nat),
            server_process=owner,
            server_socket=server_socket if query is not None else None,
            rcode=rcode,
            records=records,
            rtt_ns=received_ns - sent_ns if received_ns else None,
            error=error,
            packets=tuple(packets),
            stats=stats,
            notes=tuple(self.src.notes) + tuple(self.notes),
            meta={"command": self.command},
        )

    def _explain(self, ev: NatEvent, first: Point, sent_from: Address) -> NatEvent:
        """The nat OUTPUT rule and the conntrack entry behind the query's rewrite."""
        from flowtrace.topology.conntrack import find_entry
        from flowtrace.topology.kernel import read_state
        from flowtrace.topology.netfilter import attribute, read_ruleset

        ns = self.src.netns
        out_iface = first.ifname if first.netns.inode == ns.inode else None
        try:
            local = [a.ip for a in read_state(ns.path).addresses]
            rule = attribute(
                read_ruleset(ns.path), ev, "udp", None, out_iface, local, peer=sent_from
            )
        except FlowtraceError as exc:
            rule = f"(rules not readable: {exc.message})"
        try:
            conntrack = find_entry(
                ns.path, "udp", sent_from.ip, ev.before.ip, sent_from.port, ev.before.port, None
            )
        except FlowtraceError as exc:
            conntrack = f"(conntrack not readable: {exc.message})"
        return replace(ev, rule=rule, conntrack=conntrack)

    @staticmethod
    def _manifest_nat(result: DnsLookup) -> list[dict[str, Any]]:
        """Each rewrite with the packet id it belongs to, as the tracer's manifest has them:
        analyze and load() put these back (no two sightings show them)."""
        from flowtrace.output.jsonout import nat_dict

        entries = []
        for ev in result.nat:
            pkt = _packet_of(ev, result)
            entries.append(dict(nat_dict(ev), packet=pkt.packet_id if pkt else None))
        return entries

    def _record(
        self,
        output_dir: Path | None,
        points: list[Point],
        frames: Sequence[Frame],
        result: DnsLookup,
        interrupted: bool,
    ) -> Path:
        from flowtrace.output.traceset import TraceRecorder
        from flowtrace.pcap.pcapset import claim_set_dir, new_set_dir

        if output_dir is None:
            directory = new_set_dir(None, self.src.spec, f"dns-{self.name}")
        else:
            directory = claim_set_dir(output_dir)
        manifest: dict[str, Any] = {
            "command": self.command,
            "kind": "dns",
            "src": {"spec": self.src.spec, "netns": self.src.netns.label},
            "dns": lookup_dict(result, with_packets=False),
            "notes": list(result.notes),
        }
        recorder = TraceRecorder(directory, points, manifest)
        recorder.write(dict(enumerate(frames)), result.packets)
        recorder.close(
            result.stats,
            {"interrupted": interrupted, "nat": self._manifest_nat(result)},
        )
        return recorder.path


def _sent_from(pkt: Packet, ours: tuple[str, int | None]) -> bool:
    """Seen with our socket's address as source somewhere (before any SNAT on the way)."""
    return any((s.headers.src, s.headers.sport) == ours for s in pkt.sightings)


def _sent_to(pkt: Packet, ours: tuple[str, int | None]) -> bool:
    """Seen with our socket's address as destination (after any reverse NAT)."""
    return any((s.headers.dst, s.headers.dport) == ours for s in pkt.sightings)


def _packet_of(ev: NatEvent, result: DnsLookup) -> Packet | None:
    """The packet a rewrite before the first point belongs to: the query's or the answer's."""
    return result.answer if ev.reverse_of else result.query


def _udp_socket(server: str) -> socket.socket:
    """A UDP socket made (so living) in the calling thread's namespace, connected to server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.connect((server, DNS_PORT))
    except OSError as exc:
        sock.close()
        raise NoPathError(f"cannot send to {server}:{DNS_PORT}: {exc.strerror}") from None
    return sock


def _icmp_error_about(pkt: Packet, ours: tuple[str, int | None]) -> bool:
    """An ICMP error quoting a packet our socket sent."""
    return any(
        s.headers.inner is not None and (s.headers.inner.src, s.headers.inner.sport) == ours
        for s in pkt.sightings
    )


def _receive(
    sock: socket.socket, query_id: int, timeout: float
) -> tuple[bytes | None, int, str | None]:
    """The answer with our query's id and when it came, or when and what the connected
    socket reported instead (an ICMP error), or (None, 0, None) after the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, 0, None
        sock.settimeout(left)
        try:
            data = sock.recv(65535)
        except TimeoutError:
            return None, 0, None
        except OSError as exc:
            return None, time.time_ns(), f"the socket reported: {exc.strerror}"
        if len(data) >= 2 and int.from_bytes(data[:2], "big") == query_id:
            return data, time.time_ns(), None


def _read_answer(wire: bytes) -> tuple[str, tuple[str, ...]]:
    import dns.exception
    import dns.message
    import dns.rcode

    try:
        message = dns.message.from_wire(wire)
    except dns.exception.DNSException as exc:
        return f"unreadable answer ({exc})", ()
    records = tuple(str(rrset) for rrset in message.answer)
    return dns.rcode.to_text(message.rcode()), records


# --- output ----------------------------------------------------------------------------


def lookup_dict(result: DnsLookup, with_packets: bool = True) -> dict[str, Any]:
    """The lookup as JSON-ready values (README: `flowtrace dns --json`)."""
    from flowtrace.output.jsonout import nat_dict, packet_dict, point_dict

    data: dict[str, Any] = {
        "src": result.src.spec,
        "name": result.name,
        "type": result.qtype,
        "resolv_conf": result.config.resolv_conf,
        "nameservers": list(result.config.nameservers),
        "server": result.server or None,
        "hosts_answer": result.hosts_answer,
        "sent_from": str(result.sent_from) if result.sent_from else None,
        "server_socket": str(result.server_socket) if result.server_socket else None,
        "server_process": result.server_process,
        "rcode": result.rcode,
        "records": list(result.records),
        "error": result.error,
        "interrupted": bool(result.meta.get("interrupted")),
        "rtt_us": result.rtt_ns / 1000 if result.rtt_ns is not None else None,
        "nat": [nat_dict(ev) for ev in result.nat],
        "notes": list(result.notes),
    }
    if with_packets:
        data["points"] = [point_dict(p) for p in result.points]
        data["packets"] = [packet_dict(p) for p in result.packets]
        data["pcap"] = result.meta.get("pcap")
    return data


def render(result: DnsLookup, console: Any) -> None:
    """The lookup for a terminal: resolver, path, rewrites, server, answer."""
    from rich.text import Text

    from flowtrace.output.terminal import nat_details, nat_text, packet_table

    out = console.print
    out(Text(f"flowtrace dns {result.src.spec} {result.name} ({result.qtype})", style="bold"))
    if result.hosts_answer is not None:
        out(f"answer from {result.src.spec}'s /etc/hosts: {result.name} -> {result.hosts_answer}")
        for note in result.notes:
            out(f"note: {note}")
        return
    servers = ", ".join(result.config.nameservers) or "no nameserver"
    if result.server in result.config.nameservers[:1]:
        out(f"resolver: {result.server}:{DNS_PORT} ({result.config.described_as}: {servers})")
    else:
        out(
            f"resolver: {result.server}:{DNS_PORT} (--server; {result.config.described_as} "
            f"names {servers})"
        )
    out("path: " + " -> ".join(p.id for p in result.points))
    by_id = {p.id: p for p in result.points}
    if result.sent_from is not None:
        out(f"query sent from {result.sent_from} to {result.server}:{DNS_PORT}")
    for ev in result.nat:
        where = f"in {result.src.netns.label} before {ev.between[1]}"
        if ev.reverse_of:
            out(
                f"answer: source {ev.before} -> {ev.after} {where}: conntrack undoes "
                "the query's DNAT"
            )
        else:
            out(f"query: {nat_text(ev)} {where}")
            if ev.rule:
                out(f"  rule: {ev.rule}")
            if ev.conntrack:
                out(f"  conntrack: {ev.conntrack}")
    if result.server_process is not None:
        out(f"delivered to {result.server_socket}, a socket of {result.server_process}")
    elif result.server_socket is not None:
        out(f"no process has a socket bound to {result.server_socket}/udp there")
    for pkt in (result.query, result.answer):
        if pkt is not None:
            out("")
            out(packet_table(pkt, by_id))
            for line in nat_details(pkt.nat):
                out(line, style="yellow")
    out("")
    if result.meta.get("interrupted"):
        out(Text("interrupted before the answer came", style="red"))
    elif result.error is not None:
        out(Text(f"no answer: {result.error}", style="red"))
    elif result.rcode is None:
        out(Text(f"no answer within the timeout from {result.server}", style="red"))
    else:
        rtt = f" in {result.rtt_ns / 1000:.1f} µs" if result.rtt_ns is not None else ""
        count = len(result.records)
        out(f"answer: {result.rcode}, {count} record{'s' if count != 1 else ''}{rtt}")
        for record in result.records:
            for line in record.splitlines():
                out(f"  {line}")
    for note in result.notes:
        out(f"note: {note}")
    if result.meta.get("pcap"):
        out(f"pcap set: {result.meta['pcap']}")
