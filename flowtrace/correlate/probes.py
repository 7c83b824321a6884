"""Which probe a packet belongs to, from the marks a trace puts in its probes (pure).

A trace's probes carry their number in fields NAT leaves alone: an echo request's ICMP
sequence number is its probe number (the reply echoes it); a TCP probe's initial
sequence number is the trace's mark + probe * PROBE_ISN_STEP (the SYN-ACK acknowledges
ISN + 1, the source's RST continues at ISN + 1); an ICMP error takes the number of the
packet it quotes.  What carries no mark (a UDP answer) belongs to the latest probe sent
before it, since a trace sends one probe at a time and waits for its answer.

IPv6 has no IP ID: an IPv6 UDP probe (or the quote of one in an ICMPv6 error) is told
by its payload, which starts with the trace's mark, MAGIC and the probe number.

The live run knows more than a recorded set: the IP ID and send time of each probe and
the TCP mark.  It tells them with `sent()`; `flowtrace analyze` learns the mark from the
first SYN and counts UDP probes at the source point.  Both number packets with this
one class, so a loaded set numbers its packets as the trace did.
"""

from __future__ import annotations

from typing import Literal

from flowtrace.model import Headers, Packet, is_echo_reply, is_echo_request

#: Probe N's TCP initial sequence number is the trace's mark + N * this.
PROBE_ISN_STEP = 0x10000
#: What follows the 4-byte mark in an ICMP echo or UDP probe's payload; then the probe
#: number (2 bytes): 15 bytes in all, within the payload digest decode keeps.
MAGIC = b"flowtrace"
_MAGIC_AT = slice(4, 4 + len(MAGIC))
_NUMBER_AT = slice(4 + len(MAGIC), 6 + len(MAGIC))
_TCP_SYN, _TCP_ACK = 0x02, 0x10
_MASK = 0xFFFFFFFF

Role = Literal["request", "reply", "quoted"]


def isn_of(mark: int, probe: int) -> int:
    """The TCP initial sequence number of probe number `probe`."""
    return (mark + probe * PROBE_ISN_STEP) & _MASK


class ProbeNumbers:
    """Numbers the packets of one trace, in order of their first sighting."""

    def __init__(
        self,
        kind: str,
        count: int,
        source: str | None,
        *,
        mark: int | None = None,
        unmarked_tcp_is_foreign: bool = False,
    ) -> None:
        self.kind = kind
        self.count = count
        self.source = source  # the point probes leave from: the path's first
        #: The TCP mark: given by a live run, learned from the first SYN of a set.
        self.mark = mark
        #: TCP packets without the mark belong to no probe (a docker-proxy's legs).
        self.unmarked_tcp_is_foreign = unmarked_tcp_is_foreign
        self.ip_ids: dict[int, int] = {}  # a sent probe's IP ID -> its number
        self.sent_at: dict[int, int] = {}  # probe -> when it was sent (live runs)
        self.latest: int | None = None
        self.udp_started = 0
        #: Probe -> its request seen leaving the source / its first answer back there.
        self.sent_ns: dict[int, int] = {}
        self.answered_ns: dict[int, int] = {}

    def sent(self, probe: int, ip_id: int | None, time_ns: int) -> None:
        """A live run sent probe `probe` with this IP ID (None: IPv6 has none) at this time."""
        if ip_id is not None:
            self.ip_ids[ip_id] = probe
        self.sent_at[probe] = time_ns

    def number(self, pkt: Packet) -> int | None:
        """The probe `pkt` belongs to, or None."""
        h = pkt.first.headers
        probe: int | None = None
        if pkt.direction == "request":
            probe = self.ip_ids.get(h.ip_id)
        if probe is None:
            probe = self._marked(h, pkt.direction)
        if probe is None:
            probe = self._unmarked(pkt)
        elif self.latest is None or probe > self.latest:
            self.latest = probe
        if probe is not None:
            self._note_times(pkt, probe)
        return probe

    def answers(self, pkt: Packet, probe: int | None) -> bool:
        """A TCP answer to the probe by its acknowledgement (SYN-ACK, RST-ACK), whatever its
        tuple: a request-looking packet that is one was hidden by a rewrite no point saw."""
        h = pkt.first.headers
        if probe is None or self.mark is None or h.proto != 6 or not (h.tcp_flags or 0) & _TCP_ACK:
            return False
        isn = isn_of(self.mark, probe)
        after = (isn + 1) & _MASK
        return h.tcp_ack == after and h.tcp_seq not in (isn, after)

    def _marked(self, h: Headers, role: Role) -> int | None:
        if h.inner is not None:
            quoted = self.ip_ids.get(h.inner.ip_id)
            return quoted if quoted is not None else self._marked(h.inner, "quoted")
        if (is_echo_request(h) or is_echo_reply(h)) and h.icmp_seq is not None:
            return h.icmp_seq if h.icmp_seq < self.count else None
        if h.proto == 6 and h.tcp_seq is not None:
            return self._from_isn(h, role)
        if h.version == 6 and h.proto == 17:
            return self._from_payload(h.payload_digest)
        return None

    def _from_payload(self, digest: bytes) -> int | None:
        """The probe number a probe's payload carries after MAGIC, if it is one."""
        if digest[_MAGIC_AT] != MAGIC or len(digest) < _NUMBER_AT.stop:
            return None
        number = int.from_bytes(digest[_NUMBER_AT], "big")
        return number if number < self.count else None

    def _from_isn(self, h: Headers, role: Role) -> int | None:
        flags = h.tcp_flags or 0
        syn = bool(flags & _TCP_SYN) and not flags & _TCP_ACK
        seq = h.tcp_seq or 0
        if syn or role == "quoted":
            candidates = [seq]
        elif flags & _TCP_ACK and h.tcp_ack is not None:
            by_ack, by_seq = (h.tcp_ack - 1) & _MASK, (seq - 1) & _MASK
            candidates = [by_ack, by_seq] if role == "reply" else [by_seq, by_ack]
        else:
            candidates = [(seq - 1) & _MASK]  # the source's RST after a SYN-ACK
        if self.mark is None:
            if not syn:
                return None
            self.mark = seq & _MASK
        for isn in candidates:
            offset = (isn - self.mark) & _MASK
            if offset % PROBE_ISN_STEP == 0 and offset // PROBE_ISN_STEP < self.count:
                return offset // PROBE_ISN_STEP
        return None

    def _unmarked(self, pkt: Packet) -> int | None:
        h = pkt.first.headers
        if h.proto == 6 and self.unmarked_tcp_is_foreign:
            return None
        if self.sent_at:  # a live run: the newest probe sent before it
            earlier = [p for p, t in self.sent_at.items() if t <= pkt.first.time_ns]
            return max(earlier) if earlier else None
        if pkt.direction == "request" and h.proto == 17 and self.source in (None, pkt.first.point):
            probe = self.udp_started
            self.udp_started += 1
            self.latest = probe
            return probe
        return self.latest

    def _note_times(self, pkt: Packet, probe: int) -> None:
        at_source = next((s.time_ns for s in pkt.sightings if s.point == self.source), None)
        if at_source is None:
            return
        times = self.sent_ns if pkt.direction == "request" else self.answered_ns
        times.setdefault(probe, at_source)

    def rtt_ns(self, probe: int) -> int | None:
        """The round trip measured at the source point, if both ends were seen there."""
        sent, answered = self.sent_ns.get(probe), self.answered_ns.get(probe)
        return answered - sent if sent is not None and answered is not None else None
