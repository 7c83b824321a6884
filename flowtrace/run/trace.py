"""`flowtrace ping/tcp/udp`: marked probes sent one at a time through the live-run loop.

Each probe is a step: it is sent from a raw socket opened in the source namespace,
waited for at the source point (its answer, or its timeout), and settled until the
request and its answer were seen at every point.  The probes' marks number the packets
(correlate.probes), the verdicts are decided from them (correlate.verdicts) with the
kernel's word on drops (topology.drops), and a docker-proxy's two legs are followed
after the probes (run.legs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from flowtrace.correlate.decode import is_ndp
from flowtrace.correlate.faults import attribute, fault_record
from flowtrace.correlate.probes import ProbeNumbers
from flowtrace.correlate.verdicts import (
    NeighborSeen,
    ProbeFacts,
    decide,
    neighbor_seen,
    verdict_record,
)
from flowtrace.endpoints import engines
from flowtrace.errors import ExitStatus, FlowtraceError
from flowtrace.model import (
    Address,
    Headers,
    Packet,
    Point,
    Sighting,
    Trace,
    TraceOptions,
    Verdict,
    is_echo_reply,
    is_icmp_error,
)
from flowtrace.output.jsonout import nat_dict
from flowtrace.pcap.pcapset import TRACE_FILE, PcapSet
from flowtrace.pcap.recorder import TraceRecorder
from flowtrace.probe import ProbePlan, neighbor_filter, open_sender, send_probe
from flowtrace.run.faults import source_word
from flowtrace.run.hosts import (
    hosts_notes,
    hosts_record,
    names_hosts,
    point_descriptions,
    tunnels_record,
)
from flowtrace.run.loop import Hooks, LiveRun
from flowtrace.run.rules_word import kernel_word
from flowtrace.run.source_stack import source_rewrites
from flowtrace.topology.drops import KernelExplainer
from flowtrace.topology.route import Route, resolve_route

if TYPE_CHECKING:
    from flowtrace.endpoints.host_spec import HostSpec
    from flowtrace.endpoints.hosts import RemoteHost
    from flowtrace.run.legs import Legs
    from flowtrace.topology.nftrace import TraceMatch

#: After the answer: how long the other rings may take to hand over the probe's frames.
SETTLE_S = 0.03


class ProbeStep:
    """One probe: sent, waited for at the source, settled at every point."""

    settle_s = SETTLE_S

    def __init__(self, trace: ProbeTrace, seq: int, sender: Any) -> None:
        self.trace = trace
        self.seq = seq
        self.sender = sender
        self.timeout_s = trace.options.timeout
        #: An echo reply ends its exchange: nothing follows it to wait for (a TCP answer
        #: is followed by the source's RST, which the loop's default linger waits for).
        self.linger_s: float | None = 0.0 if trace.options.kind == "icmp" else None

    def send(self) -> None:
        t = self.trace
        packet = t.probe.build(self.seq)
        ip_id = int.from_bytes(packet[4:6], "big") if t.probe.version == 4 else None
        t.numbers.sent(self.seq, ip_id, time.time_ns())
        try:
            send_probe(self.sender, packet, t.route.dst_ip)
        except FlowtraceError as exc:
            if self.seq == 0:
                raise  # the path never worked: an error, not a verdict
            t.refused[self.seq] = exc.message  # it did until now: something broke it

    def answered(self, pending: Sequence[Sighting]) -> bool:
        if self.seq in self.trace.refused:
            return True  # nothing was sent: nothing to wait for
        source = self.trace.source_point
        return any(
            s.point == source and s.outbound is not True and self._answers(s) for s in pending
        )

    def settled(self, pending: Sequence[Sighting]) -> bool:
        """The request and its answer were each seen at every point."""
        probe = self.trace.probe
        requests = {s.point for s in pending if probe.is_request(s.headers, self.seq)}
        answers = {s.point for s in pending if self._answers(s)}
        return len(requests) == len(answers) == len(self.trace.points)

    def _answers(self, s: Sighting) -> bool:
        h = s.headers
        if is_echo_reply(h):
            return h.icmp_seq == self.seq & 0xFFFF
        if h.inner is not None and is_icmp_error(h):
            return self.trace.quoted_probe(h.inner) == self.seq
        if h.proto == 6 and h.tcp_ack is not None and (h.tcp_flags or 0) & 0x14:
            return h.tcp_ack == (self.trace.probe.seq_mark(self.seq) + 1) & 0xFFFFFFFF
        if h.proto == 17:
            return h.dport == self.trace.probe.sport
        return False


class ProbeTrace:
    """A trace along a resolved route: its points, probes, numbering and verdicts.

    `hosts`: the other hosts the route's points are on, connected (run.hosts)."""

    def __init__(
        self, route: Route, options: TraceOptions, hosts: Mapping[str, RemoteHost] | None = None
    ) -> None:
        self.route = route
        self.options = options
        self.hosts = dict(hosts or {})
        self.tunnels = tuple(getattr(route, "tunnels", ()))
        self.points: list[Point] = list(route.plan.points)
        if route.proxy is not None:  # leg 2: the proxy's own connection to the container
            known = {p.id for p in self.points}
            self.points += [p for p in route.proxy.points if p.id not in known]
        self.point_ids = [p.id for p in self.points]
        #: Namespaces whose firewall changed while the probes were out, in words.
        self.rule_notes: list[str] = []
        self.source_point = self.points[0].id
        self.probe = ProbePlan.new(
            options.kind, route.plan.src_ip or "", route.dst_ip, route.dst_port
        )
        self.numbers = ProbeNumbers(
            options.kind,
            options.count,
            self.source_point,
            mark=self.probe.mark if options.kind == "tcp" else None,
            unmarked_tcp_is_foreign=route.proxy is not None,
        )
        #: With a docker-proxy: the real connection's two legs.
        self.legs: Legs | None = None
        if route.proxy is not None:
            from flowtrace.run.legs import Legs  # a docker-proxy's legs: tcp to a published port

            self.legs = Legs(
                route.proxy,
                route.src.netns.path,
                (route.dst_ip, route.dst_port or 0),
                (self.probe.seq_mark(seq) for seq in range(options.count)),
                options.timeout,
                [p.id for p in route.plan.points],
            )
        self.explainer = KernelExplainer(self.points, route.plan.dst_ip, route.plan.dst_port)
        #: Probes the source's kernel refused to send (after the first), and its words.
        self.refused: dict[int, str] = {}
        #: The engine's own parts the path and its rules met (netavark's bridges and chains).
        self.engine_notes: list[str] = []

    # --- hooks --------------------------------------------------------------------------------

    def keep(self, h: Headers | None) -> bool:
        if self.legs is not None and not self.legs.keeps(h):
            return False  # another connection through the same port or to the same container
        # The filter lets every ICMP error through: one about a packet no probe sent is
        # not ours (NAT never rewrites the quoted IP ID, nor an IPv6 probe's marks).
        return not (
            h is not None
            and h.inner is not None
            and is_icmp_error(h)
            and self.quoted_probe(h.inner) is None
        )

    def quoted_probe(self, inner: Headers) -> int | None:
        """The probe an ICMP error quotes: by its IP ID (IPv4), by its marks (IPv6)."""
        if inner.version == 4:
            return self.numbers.ip_ids.get(inner.ip_id)
        sent = self.numbers.sent_at
        return next((seq for seq in sent if self.probe.is_request(inner, seq)), None)

    @staticmethod
    def sight(h: Headers) -> bool:
        """NDP frames are recorded in the set (they explain a lost probe) but are no
        packet the trace follows."""
        return not is_ndp(h)

    def number(self, pkt: Packet) -> Packet:
        probe = self.numbers.number(pkt)
        pkt = replace(pkt, probe=probe)
        if pkt.direction == "request" and self.numbers.answers(pkt, probe):
            pkt = replace(pkt, direction="reply")  # a rewrite no point saw hid its flow
        return pkt

    def rewrites(self, packets: list[Packet]) -> list[Packet]:
        return source_rewrites(self.route, packets)

    # --- the run ------------------------------------------------------------------------------

    def capture_filter(self) -> str:
        """The probes' filter (plus a docker-proxy's legs); when the path is blocked, also
        the ARP (or NDP) about the neighbour the source cannot reach (the only frames such
        a probe makes); over IPv6 the NDP of the first hop, always: a neighbour that never
        answers holds the probe back, and its solicitations then say why.  Across an
        overlay, also the probes inside VXLAN on the underlay."""
        probes = self.probe.capture_filter(self.options.count, vxlan=bool(self.tunnels))
        if self.legs is not None:
            probes = self.legs.capture_filter(probes)
        neighbors = []
        blocked = self.route.plan.blocked
        if blocked is not None:
            neighbors.append(blocked.neighbor)
        first_hop = self.first_hop
        if first_hop is not None and first_hop not in neighbors:
            neighbors.append(first_hop)
        if not neighbors:
            return probes
        return " or ".join([f"({probes})", *(neighbor_filter(ip) for ip in neighbors)])

    @property
    def first_hop(self) -> str | None:
        """The neighbour an IPv6 probe's source resolves first (None over IPv4)."""
        return self.route.plan.first_hop if self.probe.version == 6 else None

    def run(self, on_probe: Callable[[int], None] | None = None) -> Trace:
        opts = self.options
        hooks = Hooks(
            keep=self.keep,
            number=self.number,
            rewrites=self.rewrites,
            label=self.legs.label if self.legs is not None else None,
            sight=self.sight,
        )
        live = LiveRun(self.points, self.capture_filter(), hooks, hosts=self.hosts)
        first_leg_packet = 0
        write_error: str | None = None
        from flowtrace.topology.netfilter.watch import RulesWatch  # subprocess: 7 ms

        netns = [p.netns for p in self.points]
        # The rules' fingerprints are read while the capture starts (and the tracing tables
        # of --rules kernel come, which they leave out), and are in before the first probe.
        watch = RulesWatch.begin(netns)
        word = kernel_word(opts.rules, netns, self._trace_match, [ns.label for ns in netns])
        with word, live:
            if opts.record:
                live.recorder = self._open_recorder()
            sender = open_sender(self.route.src.netns.path, self.probe.version)
            try:
                watch.ready()
                for seq in range(opts.count):
                    if live.recording_failed:
                        break  # the set takes nothing more: stop where it ends
                    started = time.monotonic()
                    live.step(word.watch(ProbeStep(self, seq, sender)))
                    if on_probe:
                        on_probe(seq)
                    if seq + 1 < opts.count:
                        time.sleep(max(0.0, opts.interval - (time.monotonic() - started)))
            finally:
                sender.close()
            if self.legs is not None and not live.recording_failed:
                live.absorb()  # the probes' frames first, so the legs' come in a chunk of their own
                live.flush()
                first_leg_packet = live.next_packet_id
                live.step(self.legs)
        verdicts = self._verdicts(live)
        kernel = word.report(verdicts, live.packets, self.points, self.numbers.ip_ids)
        self.rule_notes = watch.changes()
        rules = [ev.rule for p in live.packets for ev in p.nat] + [v.rule for v in verdicts]
        from flowtrace.run.engine_notes import trace_notes

        self.engine_notes = trace_notes(self.points, rules)
        proxy = None
        if self.legs is not None:
            proxy = self.legs.summary([p for p in live.packets if p.packet_id >= first_leg_packet])
        if live.recorder is not None:
            extra: dict[str, Any] = {
                "notes": self._notes(),
                "verdicts": [verdict_record(v) for v in verdicts],
                "faults": [fault_record(f) for f in live.faults],
                "interrupted": live.interrupted,
                # the rule and conntrack entry of each rewrite: the pcapng cannot hold them
                "nat": [
                    dict(nat_dict(ev), packet=p.packet_id, probe=p.probe)
                    for p in live.packets
                    for ev in p.nat
                ],
            }
            if self.legs is not None:
                extra["proxy"] = proxy
            if kernel is not None:
                extra["kernel"] = kernel
            write_error = live.recorder.close(live.stats, **extra)
        trace = self._trace(live, verdicts, proxy)
        if live.recorder is not None and write_error:
            trace.meta["write_error"] = write_error
        if kernel is not None:
            trace.meta["kernel"] = kernel
        return trace

    def _trace_match(self) -> TraceMatch:
        """The probes' packets, as the kernel's trace (`--rules kernel`) picks them."""
        from flowtrace.topology.nftrace import TraceMatch

        isns = [self.probe.seq_mark(seq) for seq in range(self.options.count)]
        return TraceMatch.for_probes(self.options.kind, self.probe.mark, isns)

    def _open_recorder(self) -> TraceRecorder:
        route = self.route
        pcap_set = PcapSet.create(
            self.options.output_dir, route.src.spec, route.dst.spec, TRACE_FILE
        )
        fields: dict[str, Any] = {
            "src": {
                "spec": route.src.spec,
                "netns": route.src.netns.label,
                "ip": route.plan.src_ip,
            },
            "dst": {
                "spec": route.dst.spec,
                "netns": route.dst.netns.label,
                "ip": route.dst_ip,
                "port": route.dst_port,
            },
            "count": self.options.count,
            "engine": engines.used_meta(),
            "capture_filter": self.capture_filter(),
            "notes": self._notes(),
        }
        if self.hosts:
            fields["hosts"] = hosts_record(route, self.hosts)
            fields["tunnels"] = tunnels_record(self.tunnels)
        names: list[tuple[str, list[str]]] = []
        for p in self.points:
            if p.netns.container:
                names.extend((ip, [p.netns.container]) for ip in p.addresses)
        return TraceRecorder(
            pcap_set,
            self.points,
            self.options.kind,
            self.options.command,
            fields,
            names,
            point_descriptions(self.points, self.hosts),
        )

    # --- verdicts -------------------------------------------------------------------------------

    def probe_facts(self) -> ProbeFacts:
        route, plan = self.route, self.route.plan
        blocked = plan.blocked
        return ProbeFacts(
            source_point=self.source_point,
            destination=plan.destination,
            kind=self.options.kind,
            dst_port=route.dst_port,
            accepted_by=route.proxy.accepted_by if route.proxy is not None else None,
            closed_hint=plan.closed_hint,
            src_label=route.src.netns.label,
            blocked_neighbor=blocked.neighbor if blocked is not None else None,
            blocked_why=blocked.why if blocked is not None else None,
            points=tuple(self.point_ids),
            first_hop=self.first_hop,
            first_hop_owner=next(
                (p.netns.label for p in self.points if self.first_hop in p.addresses), None
            ),
        )

    def _verdicts(self, live: LiveRun) -> list[Verdict]:
        facts = self.probe_facts()
        sent = self.numbers.sent_at
        verdicts = [
            decide(seq, live.packets, facts, self.explainer, self._neighbors(live, seq))
            if seq not in self.refused
            else Verdict(seq, "lost", None, f"not sent: {self.refused[seq]}")
            for seq in sorted(sent)
        ]
        faults = live.faults
        if not faults:
            return verdicts
        # A probe lost at or after a fault is put down to it (correlate.faults).
        # Each probe's time is from its sending to the next one's (the last: its timeout).
        wait_ns = int(self.options.timeout * 1e9)
        order = sorted(sent.items())
        windows = {
            seq: (at, order[i + 1][1] if i + 1 < len(order) else at + wait_ns)
            for i, (seq, at) in enumerate(order)
        }
        word = None
        here = self.points[0].netns.host is None  # the source's neighbours are read here
        if here and any(
            not v.answered and v.last_point in (None, self.source_point) for v in verdicts
        ):
            word = source_word(self.points[0], self.route.dst_ip)
        return attribute(verdicts, faults, windows, self.source_point, word)

    def _neighbors(self, live: LiveRun, seq: int) -> list[NeighborSeen]:
        """The ARP and NDP frames captured while probe `seq` was out (a blocked path, or
        IPv6's first hop)."""
        if self.route.plan.blocked is None and self.first_hop is None:
            return []
        sent = self.numbers.sent_at
        return neighbor_seen(live.frames, self.point_ids, sent[seq], sent.get(seq + 1))

    def _notes(self) -> list[str]:
        notes = hosts_notes(self.route, self.hosts)
        notes += list(self.route.src.notes) + list(self.route.dst.notes)
        blocked = self.route.plan.blocked
        for note in self.route.plan.notes:
            if blocked is not None and note == blocked.why:  # the verdicts say it in full
                note = (
                    f"predicted from the kernel's state: {blocked.neighbor} cannot be reached "
                    "(macvlan isolation, explained with each probe); the probes are sent anyway"
                )
            notes.append(note)
        if self.options.kind == "tcp":
            notes.append(
                "flowtrace sends a bare SYN: the source's kernel, which opened no "
                "connection, answers a SYN-ACK with a RST"
            )
        return notes + self.engine_notes + self.rule_notes

    def _trace(
        self, live: LiveRun, verdicts: list[Verdict], proxy: dict[str, object] | None
    ) -> Trace:
        kind = {"icmp": "ping", "tcp": "tcp", "udp": "udp"}[self.options.kind]
        route = self.route
        target = str(Address(route.dst_ip, route.dst_port or None))
        meta: dict[str, object] = {
            "title": f"flowtrace {kind} {route.src.spec} -> {route.dst.spec} ({target})",
            "command": self.options.command,
            "src": route.src.spec,
            "dst": route.dst.spec,
            "dst_ip": route.dst_ip,
            "dst_port": route.dst_port,
            "kind": self.options.kind,
            "interrupted": live.interrupted,
            "family": self.probe.version,
            "engine": engines.used_meta(),
        }
        if route.family_reason:
            meta["family_reason"] = route.family_reason
        if live.recorder is not None:
            meta["pcap"] = str(live.recorder.path)
        if proxy is not None:
            meta["proxy"] = proxy
        if self.hosts:
            meta["hosts"] = hosts_record(route, self.hosts)
            meta["tunnels"] = tunnels_record(self.tunnels)
        return Trace(
            tuple(self.points),
            tuple(live.packets),
            tuple(verdicts),
            tuple(live.stats),
            meta,
            tuple(self._notes() + live.watcher.notes),
            tuple(live.faults),
        )


def run_trace(
    src: str,
    dst: str,
    options: TraceOptions,
    on_probe: Callable[[int], None] | None = None,
    hosts: Sequence[HostSpec] = (),
) -> Trace:
    """Resolve the route from src to dst and trace it with these options; `hosts` are the
    --host aliases (endpoints NAME@HOST name the others)."""
    options.check()
    if not names_hosts((src, dst), hosts):
        route = resolve_route(src, dst, options.kind, options.family)
        return ProbeTrace(route, options).run(on_probe)
    if options.rules == "kernel":
        raise FlowtraceError(
            "--rules kernel traces the probes with this host's nft and tracefs, so only on "
            "this host: across hosts, leave it out (the rules are read on each host)",
            ExitStatus.USAGE,
        )
    from flowtrace.endpoints.hosts import HostSet
    from flowtrace.topology.hostroute import refuse_ipv6_across, resolve_host_route

    refuse_ipv6_across(options.family)
    with HostSet(hosts) as connected:
        across = resolve_host_route(src, dst, options.kind, connected)
        return ProbeTrace(across, options, connected.hosts).run(on_probe)
