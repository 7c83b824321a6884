"""One trace: open every capture point, send marked probes, follow each one.

The order matters and is the point of the tool: all capture sockets are bound (with
their BPF filter) before the first probe leaves, so nothing the probe does can be
missed; probes go out one at a time and each waits for its answer at the source
point (or its timeout); what was seen is correlated and appended to the pcap set
probe by probe.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from flowtrace.model import (
    Frame,
    Headers,
    NatEvent,
    Packet,
    Point,
    PointStats,
    Sighting,
    Trace,
    Verdict,
)
from flowtrace.probe import ProbePlan, open_sender, send_probe

if TYPE_CHECKING:
    from flowtrace.api import Route, TraceOptions
    from flowtrace.output.traceset import TraceRecorder
    from flowtrace.proxy import LegFollower
    from flowtrace.topology.path import Blocked

POLL_S = 0.002
RETIRE_MS = 4  # ring blocks hand over frames at least this often
SETTLE_S = 0.03  # after the answer: let the other rings hand over their frames


class Tracer:
    def __init__(self, route: Route, options: TraceOptions) -> None:
        self.route = route
        self.options = options
        self.points: list[Point] = list(route.plan.points)
        if route.proxy is not None:  # leg 2: the proxy's own connection to the container
            known = {p.id for p in self.points}
            self.points += [p for p in route.proxy.points if p.id not in known]
        self.point_ids = [p.id for p in self.points]
        self.source_point = self.points[0].id
        self.probe = ProbePlan.new(
            options.kind, route.plan.src_ip or "", route.dst_ip, route.dst_port
        )
        self.frames: list[Frame] = []
        self.sightings: list[Sighting] = []
        self.packets: list[Packet] = []
        self.verdicts: list[Verdict] = []
        self.sent_at: dict[int, int] = {}
        self._decoded_upto = 0
        self._written_upto = 0
        self._next_packet_id = 1
        self._taken = 0  # frames the session handed over (kept or not)
        #: With a docker-proxy: the real connection's two legs (flowtrace.proxy).
        self.legs: LegFollower | None = None
        if route.proxy is not None:
            from flowtrace.proxy import LegFollower

            self.legs = LegFollower(self, route.proxy)
        self._ip_ids: dict[int, int] = {}  # request IP ID -> probe number
        self.recorder: TraceRecorder | None = None
        #: Why a lost request vanished, by (last point, protocol, addresses, ports).
        self._losses: dict[tuple[object, ...], str | None] = {}

    # --- the run ----------------------------------------------------------------------------

    def run(self, on_probe: Callable[[int], None] | None = None) -> Trace:
        from flowtrace.capture.session import CaptureSession

        opts = self.options
        session = CaptureSession(
            self.points,
            self._capture_filter(),
            None,
            keep_frames=True,
            workers=0,
            ring_mb=2,
            retire_ms=RETIRE_MS,
        )
        interrupted = False
        stats: list[PointStats] = []
        session.start()  # the barrier: every point is capturing from here on
        try:
            if opts.record:
                self.recorder = self._open_recorder()
            sender = open_sender(self.route.src.netns.path)
            try:
                for seq in range(opts.count):
                    started = time.monotonic()
                    self._send(sender, seq)
                    self._wait_for_answer(session, seq)
                    self._settle(session, seq)
                    if on_probe:
                        on_probe(seq)
                    if seq + 1 < opts.count:
                        time.sleep(max(0.0, opts.interval - (time.monotonic() - started)))
            finally:
                sender.close()
            if self.legs is not None:
                self.legs.follow(session)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            session.stop()
            stats = session.snapshot()
            self._absorb(session.frames(since=self._taken))
            self._flush_chunk(final=True)
            self._finish_verdicts()
            if self.recorder is not None:
                from flowtrace.output.jsonout import nat_dict

                nat = [
                    dict(nat_dict(ev), packet=p.packet_id, probe=p.probe)
                    for p in self.packets
                    for ev in p.nat
                ]
                self.recorder.close(
                    stats,
                    {
                        "verdicts": [str(v) for v in self.verdicts],
                        "interrupted": interrupted,
                        # the rule and conntrack entry of each rewrite: the pcapng cannot hold them
                        "nat": nat,
                        **({"proxy": self.legs.summary} if self.legs is not None else {}),
                    },
                )
        return self._trace(stats, interrupted)

    def _open_recorder(self) -> TraceRecorder:
        from flowtrace.output.traceset import TraceRecorder
        from flowtrace.pcap.pcapset import claim_set_dir, new_set_dir

        directory = self.options.output_dir
        if directory is None:
            directory = new_set_dir(None, self.route.src.spec, self.route.dst.spec)
        else:
            directory = claim_set_dir(directory)  # refuses a folder that holds a set
        manifest: dict[str, Any] = {
            "command": self.options.command,
            "kind": self.options.kind,
            "src": {
                "spec": self.route.src.spec,
                "netns": self.route.src.netns.label,
                "ip": self.route.plan.src_ip,
            },
            "dst": {
                "spec": self.route.dst.spec,
                "netns": self.route.dst.netns.label,
                "ip": self.route.dst_ip,
                "port": self.route.dst_port,
            },
            "count": self.options.count,
            "capture_filter": self._capture_filter(),
            "notes": self._notes(),
        }
        names: list[tuple[str, list[str]]] = []
        for p in self.points:
            if p.netns.container:
                names.extend((ip, [p.netns.container]) for ip in p.addresses)
        return TraceRecorder(directory, self.points, manifest, names)

    def _capture_filter(self) -> str:
        """The probes' filter (plus a docker-proxy's legs); when the path is blocked, also
        the ARP about the neighbour the source cannot reach (the only frames such a probe
        makes)."""
        probes = self.probe.capture_filter(self.options.count)
        if self.legs is not None:  # and the docker-proxy's two connections
            probes = self.legs.capture_filter(probes)
        blocked = self.route.plan.blocked
        if blocked is None:
            return probes
        ip = int.from_bytes(socket.inet_aton(blocked.neighbor), "big")
        return f"({probes}) or (arp and (arp[24:4] = {ip:#x} or arp[14:4] = {ip:#x}))"

    def _send(self, sender: Any, seq: int) -> None:
        packet = self.probe.build(seq)
        self._ip_ids[int.from_bytes(packet[4:6], "big")] = seq
        self.sent_at[seq] = time.time_ns()
        send_probe(sender, packet, self.route.dst_ip)

    def _wait_for_answer(self, session: Any, seq: int) -> None:
        deadline = time.monotonic() + self.options.timeout
        while time.monotonic() < deadline:
            self._absorb(session.frames(since=self._taken))
            if self._answered_at_source(seq):
                return
            time.sleep(POLL_S)

    def _settle(self, session: Any, seq: int) -> None:
        """Let every ring hand over this probe's frames, then record them.

        Done once the request and its answer were each seen at every point (plus two
        block-retire periods, so a packet still in flight, like the source's RST after a
        SYN-ACK, is not split between two chunks); otherwise after SETTLE_S.
        """
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            self._absorb(session.frames(since=self._taken))
            if self._seen_everywhere(seq):
                time.sleep(2 * RETIRE_MS / 1000)
                break
            time.sleep(POLL_S)
        self._absorb(session.frames(since=self._taken))
        self._flush_chunk()

    def _seen_everywhere(self, seq: int) -> bool:
        chunk = self.sightings[self._decoded_upto :]
        requests = {s.point for s in chunk if self._ip_ids.get(s.headers.ip_id) == seq}
        answers = {s.point for s in chunk if self._answers(s, seq)}
        return len(requests) == len(answers) == len(self.points)

    # --- decoding and correlation -----------------------------------------------------------

    def _absorb(self, new: Sequence[Frame]) -> None:
        """Decode the frames the session handed over since last time."""
        from flowtrace.correlate.decode import decode_frame

        self._taken += len(new)
        for f in new:
            headers = decode_frame(f.data, self.points[f.point].linktype)
            if self.legs is not None and not self.legs.keeps(headers):
                continue  # another connection through the same port or to the same container
            if headers is not None and self._foreign_icmp_error(headers):
                continue  # the filter lets every ICMP error through: this one is not ours
            i = len(self.frames)
            self.frames.append(f)
            if headers is not None:
                self.sightings.append(
                    Sighting(self.point_ids[f.point], f.time_ns, headers, f.outbound, i)
                )

    def _foreign_icmp_error(self, h: Headers) -> bool:
        """An ICMP error about a packet no probe sent (NAT never rewrites the quoted IP ID).

        The capture filter cannot know the probes' IP IDs in advance, so on a busy bridge
        it also passes other traffic's errors; they would show as packets of no probe.
        """
        return h.proto == 1 and h.inner is not None and h.inner.ip_id not in self._ip_ids

    def _answered_at_source(self, seq: int) -> bool:
        for s in self.sightings[self._decoded_upto :]:
            if s.point == self.source_point and s.outbound is not True and self._answers(s, seq):
                return True
        return False

    def _answers(self, s: Sighting, seq: int) -> bool:
        h = s.headers
        if h.proto == 1 and h.icmp_type == 0:
            return h.icmp_seq == seq & 0xFFFF
        if h.proto == 1 and h.inner is not None:
            return self._ip_ids.get(h.inner.ip_id) == seq
        if h.proto == 6 and h.tcp_ack is not None and (h.tcp_flags or 0) & 0x14:
            return h.tcp_ack == (self.probe.seq_mark(seq) + 1) & 0xFFFFFFFF
        if h.proto == 17:
            return h.dport == self.probe.sport
        return False

    def _probe_of(self, pkt: Packet) -> int | None:
        h = pkt.first.headers
        if h.ip_id in self._ip_ids and pkt.direction == "request":
            return self._ip_ids[h.ip_id]
        if h.proto == 1 and h.icmp_type in (0, 8) and h.icmp_seq is not None:
            return h.icmp_seq if h.icmp_seq < self.options.count else None
        if h.proto == 1 and h.inner is not None:
            return self._ip_ids.get(h.inner.ip_id)
        if h.proto == 6:
            for seq in range(self.options.count):
                isn = self.probe.seq_mark(seq)
                if (
                    h.tcp_seq in (isn, (isn + 1) & 0xFFFFFFFF)
                    or h.tcp_ack == (isn + 1) & 0xFFFFFFFF
                ):
                    return seq
        if h.proto == 6 and self.route.proxy is not None:
            return None  # a packet of the real connection through the proxy
        # a UDP answer: the newest probe sent before it
        earlier = [k for k, t in self.sent_at.items() if t <= pkt.first.time_ns]
        return max(earlier) if earlier else None

    def _answers_probe(self, pkt: Packet) -> bool:
        """A TCP answer to a probe by its acknowledgement (SYN-ACK, RST-ACK), whatever its tuple."""
        h = pkt.first.headers
        if pkt.probe is None or h.proto != 6 or not (h.tcp_flags or 0) & 0x10:
            return False
        isn = self.probe.seq_mark(pkt.probe)
        after = (isn + 1) & 0xFFFFFFFF
        return h.tcp_ack == after and h.tcp_seq not in (isn, after)

    def _flush_chunk(self, final: bool = False) -> None:
        """Correlate the sightings since the last flush and append them to the pcap set."""
        from flowtrace.correlate.match import correlate

        chunk = self.sightings[self._decoded_upto :]
        frames_chunk = {i: self.frames[i] for i in range(self._written_upto, len(self.frames))}
        self._decoded_upto = len(self.sightings)
        self._written_upto = len(self.frames)
        if not chunk and not frames_chunk:
            return
        packets = []
        for pkt in correlate(chunk, self.point_ids):
            pkt = replace(pkt, packet_id=self._next_packet_id, probe=self._probe_of(pkt))
            if pkt.direction == "request" and self._answers_probe(pkt):
                pkt = replace(pkt, direction="reply")  # a rewrite no point saw hid its flow
            self._next_packet_id += 1
            packets.append(pkt)
        packets = attribute_nat(self._local_nat(packets), self.points)
        self.packets.extend(packets)
        if self.recorder is not None:
            labels = {}
            if self.legs is not None:
                labels = {p.packet_id: text for p in packets if (text := self.legs.label(p))}
            self.recorder.write(frames_chunk, packets, labels)

    # --- NAT: the rule and the conntrack entry ------------------------------------------------

    def _local_nat(self, packets: list[Packet]) -> list[Packet]:
        """Rewrites the source's own stack made before the first point (flowtrace.local_nat)."""
        from flowtrace.local_nat import loopback_snat, source_dnat

        if self.route.plan.dnat_at_source:
            return [source_dnat(self.route, pkt) for pkt in packets]
        if self.points[0].role == "loopback":
            return [loopback_snat(self.route, self.points[0].ifname, pkt) for pkt in packets]
        return packets

    # --- verdicts -----------------------------------------------------------------------------

    def _finish_verdicts(self) -> None:
        self.verdicts = [self._verdict(seq) for seq in sorted(self.sent_at)]

    def _verdict(self, seq: int) -> Verdict:
        mine = [p for p in self.packets if p.probe == seq]
        requests = [p for p in mine if p.direction == "request"]
        replies = [p for p in mine if p.direction == "reply"]
        destination = self.route.plan.destination
        blocked = self.route.plan.blocked
        if blocked is not None and not any(_at(r.sightings, self.source_point) for r in replies):
            verdict = self._blocked_verdict(seq, blocked)
            if verdict is not None:
                return verdict
        if not requests:
            return Verdict(seq, "lost", None, "not seen leaving the source")
        request = requests[0]
        start = _at(request.sightings, self.source_point)
        for reply in replies:
            end = _at(reply.sightings, self.source_point)
            h = reply.first.headers
            if end is None:
                continue
            rtt = end - start if start is not None else None
            if h.proto == 1 and h.icmp_type == 0:
                return Verdict(seq, "replied", None, "echo reply", rtt)
            if h.proto == 6 and (h.tcp_flags or 0) & 0x12 == 0x12:
                proxy = self.route.proxy
                if proxy is not None:
                    listening = f"{proxy.listener.ip}:{proxy.listener.port}"
                    by = f"docker-proxy pid {proxy.listener.pid} (listening on {listening})"
                    return Verdict(
                        seq, "replied", None, f"SYN-ACK from {by}: the port is open", rtt
                    )
                return Verdict(seq, "replied", None, "SYN-ACK: the port is open", rtt)
            if h.proto == 6 and (h.tcp_flags or 0) & 0x04:
                closed = f"RST from {h.src}: the port is closed"
                hint = self.route.plan.closed_hint
                return Verdict(seq, "refused", None, f"{closed}; {hint}" if hint else closed, rtt)
            if h.proto == 1 and h.icmp_type == 3 and h.icmp_code == 3:
                port = f"{self.route.dst_port}/{self.options.kind}"
                return Verdict(
                    seq,
                    "refused",
                    None,
                    f"ICMP port unreachable from {h.src}: nothing listens on {port}",
                    rtt,
                )
            if h.proto == 1:
                return Verdict(seq, "unreachable", None, f"{icmp_error_text(h)} from {h.src}", rtt)
            return Verdict(seq, "replied", None, f"{h.proto_name} answer", rtt)
        if replies:
            last = replies[0].last.point
            return Verdict(seq, "lost", last, "the answer was lost on its way back")
        seen = {s.point for s in request.sightings}
        if destination and destination in seen:
            arrived = next(s for s in request.sightings if s.point == destination)
            why = self._why_unanswered(arrived)
            if why is not None:
                return Verdict(seq, "lost", destination, why)
            return Verdict(seq, "delivered", destination, "no answer came back")
        final = request.last
        why = self._why_lost(final)
        return Verdict(seq, "lost", final.point, why or f"no sighting after {final.point}")

    def _blocked_verdict(self, seq: int, blocked: Blocked) -> Verdict | None:
        """A probe the path walk said cannot arrive: the unanswered ARP, and why.

        None when someone did answer the ARP: then the prediction was wrong and the
        usual verdict applies.
        """
        start = self.sent_at[seq]
        end = self.sent_at.get(seq + 1)
        asked: dict[int, int] = {}
        for frame in self.frames:
            if frame.time_ns < start or (end is not None and frame.time_ns >= end):
                continue
            arp = arp_fields(frame.data)
            if arp is None:
                continue
            op, sender_ip, target_ip = arp
            if op == 2 and sender_ip == blocked.neighbor:
                return None
            if op == 1 and target_ip == blocked.neighbor:
                asked[frame.point] = asked.get(frame.point, 0) + 1
        src = self.route.src.netns.label
        if not asked:  # it joined a resolution already under way, or the entry had failed
            return Verdict(seq, "lost", None, f"never left {src}: {blocked.why}")
        where = [self.point_ids[i] for i in sorted(asked)]
        seen = " and ".join((", ".join(where[:-1]), where[-1])) if len(where) > 1 else where[0]
        return Verdict(
            seq,
            "lost",
            where[-1],
            f"never left {src}: its ARP request for {blocked.neighbor} ({max(asked.values())} "
            f"sent, seen at {seen}) was never answered; {blocked.why}",
        )

    def _why_lost(self, last: Sighting) -> str | None:
        """The filter rule that dropped a request (looked up once per place and flow)."""
        from flowtrace.errors import FlowtraceError
        from flowtrace.topology.drops import explain_loss

        h = last.headers
        key = (last.point, h.proto, h.src, h.dst, h.sport, h.dport)
        if key not in self._losses:
            plan = self.route.plan
            try:
                why = explain_loss(self.points, last.point, h, plan.dst_ip, plan.dst_port)
            except (FlowtraceError, OSError):
                why = None  # the namespace vanished, or its rules cannot be read
            self._losses[key] = why
        return self._losses[key]

    def _why_unanswered(self, arrived: Sighting) -> str | None:
        """The destination's filter rule that dropped a delivered request or its answer."""
        from flowtrace.errors import FlowtraceError
        from flowtrace.topology.drops import explain_unanswered

        h = arrived.headers
        key = ("unanswered", arrived.point, h.proto, h.src, h.dst, h.sport, h.dport)
        if key not in self._losses:
            try:
                why = explain_unanswered(self.points, arrived.point, h)
            except (FlowtraceError, OSError):
                why = None  # the namespace vanished, or its rules cannot be read
            self._losses[key] = why
        return self._losses[key]

    def _notes(self) -> list[str]:
        notes = list(self.route.src.notes) + list(self.route.dst.notes)
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
        return notes

    def _trace(self, stats: list[PointStats], interrupted: bool) -> Trace:
        kind = {"icmp": "ping", "tcp": "tcp", "udp": "udp"}[self.options.kind]
        target = f"{self.route.dst_ip}" + (f":{self.route.dst_port}" if self.route.dst_port else "")
        meta: dict[str, object] = {
            "title": f"flowtrace {kind} {self.route.src.spec} -> {self.route.dst.spec} ({target})",
            "command": self.options.command,
            "src": self.route.src.spec,
            "dst": self.route.dst.spec,
            "dst_ip": self.route.dst_ip,
            "dst_port": self.route.dst_port,
            "kind": self.options.kind,
            "interrupted": interrupted,
        }
        if self.recorder is not None:
            meta["pcap"] = str(self.recorder.path)
        if self.legs is not None and self.legs.summary is not None:
            meta["proxy"] = self.legs.summary
        return Trace(
            tuple(self.points),
            tuple(self.packets),
            tuple(self.verdicts),
            tuple(stats),
            meta,
            tuple(self._notes()),
        )


def attribute_nat(packets: Sequence[Packet], points: Sequence[Point]) -> list[Packet]:
    """Each rewrite with the rule that made it and the conntrack entry, read where it happened."""
    by_id = {p.id: p for p in points}
    out = []
    forward: dict[tuple[str, str, str], NatEvent] = {}
    for pkt in packets:
        events = []
        for ev in pkt.nat:
            a, b = by_id.get(ev.between[0]), by_id.get(ev.between[1])
            if a is None or b is None:
                events.append(ev)
                continue
            ns_point = b if ev.kind == "SNAT" else a
            if ev.reverse_of is None:
                ev = _explain(ev, pkt, ns_point, a, b)
                forward[(ev.kind, ev.between[1], ev.between[0])] = ev
            else:
                twin = next((f for f in forward.values() if f.kind == ev.reverse_of), None)
                if twin is not None:
                    ev = replace(ev, rule=twin.rule, conntrack=twin.conntrack)
            events.append(ev)
        out.append(replace(pkt, nat=tuple(events)))
    return out


def _explain(ev: NatEvent, pkt: Packet, ns_point: Point, a: Point, b: Point) -> NatEvent:
    from flowtrace.errors import FlowtraceError
    from flowtrace.topology.conntrack import find_entry
    from flowtrace.topology.netfilter import attribute, read_ruleset

    before = next((s for s in pkt.sightings if s.point == ev.between[0]), pkt.first)
    h = before.headers
    rule = conntrack = None
    try:
        ruleset = read_ruleset(ns_point.netns.path)
        in_iface = a.ifname if a.netns.inode == ns_point.netns.inode else None
        out_iface = b.ifname if b.netns.inode == ns_point.netns.inode else None
        rule = attribute(ruleset, ev, h.proto_name, in_iface, out_iface)
    except FlowtraceError as exc:
        rule = f"(rules not readable: {exc.message})"
    try:
        conntrack = find_entry(
            ns_point.netns.path, h.proto_name, h.src, h.dst, h.sport, h.dport, h.icmp_id
        )
    except FlowtraceError as exc:
        conntrack = f"(conntrack not readable: {exc.message})"
    return replace(ev, rule=rule, conntrack=conntrack)


UNREACHABLE_CODES = {
    0: "network unreachable",
    1: "host unreachable",
    2: "protocol unreachable",
    3: "port unreachable",
    4: "fragmentation needed",
    9: "network administratively prohibited",
    10: "host administratively prohibited",
    13: "communication administratively prohibited (a REJECT rule)",
}


def icmp_error_text(h: Any) -> str:
    """An ICMP error in words: 'ICMP host unreachable (type 3 code 1)'."""
    if h.icmp_type == 3:
        what = UNREACHABLE_CODES.get(h.icmp_code, "destination unreachable")
    elif h.icmp_type == 11:
        what = "time exceeded"
    else:
        what = f"error type {h.icmp_type}"
    return f"ICMP {what} (type {h.icmp_type} code {h.icmp_code})"


def arp_fields(frame: bytes) -> tuple[int, str, str] | None:
    """(operation, sender IP, target IP) of an Ethernet ARP frame for IPv4, else None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06" or frame[16:18] != b"\x08\x00":
        return None
    op = int.from_bytes(frame[20:22], "big")
    return op, socket.inet_ntoa(frame[28:32]), socket.inet_ntoa(frame[38:42])


def _at(sightings: Iterable[Sighting], point: str) -> int | None:
    for s in sightings:
        if s.point == point:
            return s.time_ns
    return None
