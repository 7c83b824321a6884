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
path) as one step of the live-run loop (run.loop): captured on every point of the path
to the server, correlated, and written as a pcap set like a trace's.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from flowtrace.correlate.verdicts import icmp_error_text
from flowtrace.endpoints import engines
from flowtrace.endpoints.docker import docker_available, inspect_container, running_containers
from flowtrace.endpoints.files import hosts_lookup, resolv_nameservers
from flowtrace.endpoints.netns import run_in_netns
from flowtrace.endpoints.resolve import resolve, resolve_ip
from flowtrace.endpoints.sockets import find_socket_owner
from flowtrace.errors import ExitStatus, FlowtraceError, NoPathError, NotFoundError
from flowtrace.model import (
    RULES_SOURCES,
    Address,
    Endpoint,
    NatEvent,
    Packet,
    Point,
    Sighting,
)
from flowtrace.model.dns import DNS_PORT, DnsLookup, ResolverConfig
from flowtrace.output.jsonout import lookup_dict, nat_dict
from flowtrace.pcap.pcapset import TRACE_FILE, PcapSet
from flowtrace.pcap.recorder import TraceRecorder
from flowtrace.run.engine_notes import resolver_note
from flowtrace.run.loop import Hooks, LiveRun
from flowtrace.run.rules_word import kernel_word
from flowtrace.topology.nftrace import TraceMatch
from flowtrace.topology.path import LiveView, plan_path
from flowtrace.topology.rewrites import Flow, explain_rewrite

#: Docker's embedded DNS server, inside every container on a user-defined network.
DOCKER_DNS = "127.0.0.11"
#: After the answer: how long the other rings may take to hand over the lookup's frames.
SETTLE_S = 0.05


# --- pure helpers -----------------------------------------------------------------------


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
        servers = resolv_nameservers(Path(resolv).read_text()) if resolv else ()
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
        info = inspect_container(src.netns.container)
        if info.engine == "podman" and set(info.addresses) <= {"podman"}:
            text += (
                f". {src.spec} is on Podman's default network podman, which has no DNS "
                "(no aardvark-dns): containers there find each other by IP, not by name"
            )
            target = _container_address(name)
            if target:
                text += f" ({name} is at {target})"
            text += "; on a network made with `podman network create`, names resolve"
        elif set(info.addresses) <= {"bridge"}:
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
    rules: str = "model",
) -> DnsLookup:
    """Resolve `name` from `src_spec` the way its resolver would, and follow the packets."""
    import dns.exception
    import dns.name
    import dns.rdatatype

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
    if rules not in RULES_SOURCES:
        raise FlowtraceError(
            f"bad rules {rules!r}: give one of {', '.join(RULES_SOURCES)}", ExitStatus.USAGE
        )
    src = resolve(src_spec)
    config = resolver_config(src)
    if server is None:
        in_hosts = hosts_lookup(_hosts_text(config), name, 6 if qtype.upper() == "AAAA" else 4)
        if in_hosts is not None and qtype.upper() in ("A", "AAAA"):
            note = (
                f"{name} is in {src.spec}'s /etc/hosts ({config.hosts_file}): "
                "the resolver answers from the file and sends no packet"
            )
            return DnsLookup(
                src,
                name,
                qtype.upper(),
                config,
                "",
                hosts_answer=in_hosts,
                notes=(note,),
                meta={"command": command, "engine": engines.used_meta()},
            )
        if not config.nameservers:
            raise NoPathError(f"{config.described_as} names no nameserver: nothing to ask")
        server = config.nameservers[0]
    return DnsRun(src, name, qtype.upper(), config, server, timeout, command, rules).run(
        Path(output_dir) if output_dir is not None else None, record
    )


class DnsQuery:
    """The live run's step: one query sent from the resolver's socket, and its answer."""

    settle_s = SETTLE_S

    def __init__(self, sock: socket.socket, wire: bytes, query_id: int, timeout: float) -> None:
        self.sock = sock
        self.wire = wire
        self.query_id = query_id
        self.timeout_s = timeout
        self.points = 0
        self.sent_ns = self.received_ns = 0
        self.reply: bytes | None = None
        #: What the connected socket reported instead of an answer (an ICMP error).
        self.error: str | None = None

    def send(self) -> None:
        self.sock.setblocking(False)
        self.sent_ns = time.time_ns()
        self.sock.send(self.wire)

    def answered(self, pending: Sequence[Sighting]) -> bool:
        """The answer with our query's id came, or the socket reported an error."""
        while self.reply is None and self.error is None:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                break
            except OSError as exc:
                self.received_ns = time.time_ns()
                self.error = f"the socket reported: {exc.strerror}"
                break
            if len(data) >= 2 and int.from_bytes(data[:2], "big") == self.query_id:
                self.reply, self.received_ns = data, time.time_ns()
        return self.reply is not None or self.error is not None

    def settled(self, pending: Sequence[Sighting]) -> bool:
        """Every point saw something of the lookup (nothing to wait for without an answer)."""
        if self.reply is None and self.error is None:
            return True
        return len({s.point for s in pending}) == self.points


class DnsRun:
    def __init__(
        self,
        src: Endpoint,
        name: str,
        qtype: str,
        config: ResolverConfig,
        server: str,
        timeout: float,
        command: str,
        rules: str = "model",
    ) -> None:
        self.src, self.name, self.qtype, self.config = src, name, qtype, config
        self.server, self.timeout, self.rules = server, timeout, rules
        self.command = command or f"flowtrace dns {src.spec} {name}"
        self.notes: list[str] = []
        self.sent_from: Address | None = None

    # --- planning -------------------------------------------------------------------------

    def _plan(self) -> tuple[list[Point], Endpoint | None]:
        """The points between the source and the server, and the server's endpoint."""
        import ipaddress

        try:
            ipaddress.ip_address(self.server)
        except ValueError:
            raise FlowtraceError(
                f"bad server {self.server!r}: give an IP address", ExitStatus.USAGE
            ) from None
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

    # --- hooks ------------------------------------------------------------------------------

    def number(self, pkt: Packet) -> Packet:
        """What reaches our socket (the answer, or an ICMP error about the query) is a reply."""
        ours = (self.sent_from.ip, self.sent_from.port) if self.sent_from else None
        if ours is not None and (_sent_to(pkt, ours) or _icmp_error_about(pkt, ours)):
            return replace(pkt, direction="reply")
        return pkt

    # --- the run ----------------------------------------------------------------------------

    def run(self, output_dir: Path | None, record: bool) -> DnsLookup:
        import dns.message

        points, owner = self._plan()
        server_ns = owner.netns if owner is not None else self.src.netns
        if self.server == DOCKER_DNS and self.src.netns.container:
            self.notes.append(
                f"{DOCKER_DNS} is Docker's embedded DNS: dockerd answers inside "
                f"{self.src.spec}'s own namespace for the names of containers on its "
                "user-defined networks, and forwards other names to the host's resolvers"
            )
        elif self.src.netns.container:
            aardvark = resolver_note(self.server, self.name)
            if aardvark is not None:
                self.notes.append(aardvark)
        sock = run_in_netns(self.src.netns.path, _udp_socket, self.server)
        try:
            src_ip, sport = sock.getsockname()[:2]
            self.sent_from = Address(src_ip, sport)
            capture_filter = (
                f"udp port {sport} or icmp[icmptype] == icmp-unreach "
                "or icmp[icmptype] == icmp-timxceed or (icmp6 and (icmp6[0] = 1 or icmp6[0] = 3))"
            )
            query = dns.message.make_query(self.name, self.qtype)
            query.id = secrets.randbelow(0x10000)
            step = DnsQuery(sock, query.to_wire(), query.id, self.timeout)
            step.points = len(points)
            live = LiveRun(points, capture_filter, Hooks(number=self.number))
            namespaces = [self.src.netns, *(p.netns for p in points)]
            word = kernel_word(
                self.rules,
                namespaces,
                lambda: TraceMatch.for_socket(sport),
                [ns.label for ns in namespaces],
            )
            with word, live:
                if record:
                    live.recorder = self._open_recorder(output_dir, points)
                live.step(word.watch(step))
        finally:
            sock.close()
        result = self._result(live, points, server_ns, step)
        asked: list[Packet] = []  # the query's rewrites, held against the kernel's nat rules
        if result.query is not None:
            rewrites = tuple(ev for ev in result.nat if ev.reverse_of is None)
            asked.append(replace(result.query, probe=0, nat=rewrites))
        kernel = word.report([], asked, points, {})
        if kernel is not None:
            result.meta["kernel"] = kernel
        if live.recorder is not None:
            write_error = live.recorder.close(
                live.stats,
                dns=lookup_dict(result, with_packets=False),
                interrupted=live.interrupted,
                nat=self._manifest_nat(result),
            )
            result.meta["pcap"] = str(live.recorder.path)
            if write_error:
                result.meta["write_error"] = write_error
        result.meta["interrupted"] = live.interrupted
        return result

    def _open_recorder(self, output_dir: Path | None, points: list[Point]) -> TraceRecorder:
        pcap_set = PcapSet.create(output_dir, self.src.spec, f"dns-{self.name}", TRACE_FILE)
        fields: dict[str, Any] = {
            "src": {"spec": self.src.spec, "netns": self.src.netns.label},
            "engine": engines.used_meta(),
            "notes": list(self.src.notes) + self.notes,
        }
        return TraceRecorder(pcap_set, points, "dns", self.command, fields)

    def _result(
        self, live: LiveRun, points: list[Point], server_ns: Any, step: DnsQuery
    ) -> DnsLookup:
        packets = live.packets
        sent_from = self.sent_from or Address("", 0)
        label = self.src.netns.label
        sent_to = Address(self.server, DNS_PORT)
        ours = (sent_from.ip, sent_from.port)
        query = next((p for p in packets if _sent_from(p, ours)), None)
        answer = next((p for p in packets if _sent_to(p, ours)), None)
        error = step.error
        if answer is None and step.reply is None:
            answer = next((p for p in packets if _icmp_error_about(p, ours)), None)
            if answer is not None:
                h = answer.last.headers
                error = f"{icmp_error_text(h)} from {h.src}"
                if (h.proto, h.icmp_type, h.icmp_code) in ((1, 3, 3), (58, 1, 4)):
                    error += f": nothing listens on {Address(self.server, DNS_PORT)}/udp"
        nat: list[NatEvent] = []
        server_socket = sent_to
        if query is not None:
            ev = query_rewrite(label, sent_to, query.first, query.first.point)
            if ev is not None:
                nat.append(self._explain(ev, points[0], sent_from))
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
            try:
                found = find_socket_owner(
                    server_ns.path, "udp", server_socket.ip, server_socket.port or 0
                )
            except (FlowtraceError, OSError):
                found = None
            owner = str(found) if found is not None else None
        rcode: str | None = None
        records: tuple[str, ...] = ()
        if step.reply is not None:
            rcode, records = _read_answer(step.reply)
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
            rtt_ns=step.received_ns - step.sent_ns if step.received_ns else None,
            error=error,
            packets=tuple(packets),
            stats=tuple(live.stats),
            notes=tuple(self.src.notes) + tuple(self.notes),
            meta={"command": self.command, "engine": engines.used_meta()},
        )

    def _explain(self, ev: NatEvent, first: Point, sent_from: Address) -> NatEvent:
        """The nat OUTPUT rule and the conntrack entry behind the query's rewrite."""
        ns = self.src.netns
        flow = Flow("udp", sent_from.ip, ev.before.ip, sent_from.port, ev.before.port)
        return explain_rewrite(
            ev,
            ns.path,
            flow,
            in_iface=None,
            out_iface=first.ifname if first.netns.inode == ns.inode else None,
            peer=sent_from,
        )

    @staticmethod
    def _manifest_nat(result: DnsLookup) -> list[dict[str, Any]]:
        """Each rewrite with the packet id it belongs to, as a trace's manifest has them:
        analyze and load() put these back (no two sightings show them)."""
        entries = []
        for ev in result.nat:
            pkt = result.answer if ev.reverse_of else result.query
            entries.append(dict(nat_dict(ev), packet=pkt.packet_id if pkt else None))
        return entries


def _sent_from(pkt: Packet, ours: tuple[str, int | None]) -> bool:
    """Seen with our socket's address as source somewhere (before any SNAT on the way)."""
    return any((s.headers.src, s.headers.sport) == ours for s in pkt.sightings)


def _sent_to(pkt: Packet, ours: tuple[str, int | None]) -> bool:
    """Seen with our socket's address as destination (after any reverse NAT)."""
    return any((s.headers.dst, s.headers.dport) == ours for s in pkt.sightings)


def _icmp_error_about(pkt: Packet, ours: tuple[str, int | None]) -> bool:
    """An ICMP error quoting a packet our socket sent."""
    return any(
        s.headers.inner is not None and (s.headers.inner.src, s.headers.inner.sport) == ours
        for s in pkt.sightings
    )


def _udp_socket(server: str) -> socket.socket:
    """A UDP socket made (so living) in the calling thread's namespace, connected to server
    (over IPv6 when the server's address is IPv6)."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.connect((server, DNS_PORT))
    except OSError as exc:
        sock.close()
        where = Address(server, DNS_PORT)
        raise NoPathError(f"cannot send to {where}: {exc.strerror}") from None
    return sock


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
