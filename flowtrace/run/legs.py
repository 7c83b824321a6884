"""A docker-proxy's two legs, followed for real after a trace's probes.

A bare SYN never completes a handshake, so the proxy never dials on for a probe.
After the probes, the run opens a real TCP connection from the source namespace
(leg 1: client -> docker-proxy), finds the proxy's own new socket to the container
among its pid's sockets (leg 2: docker-proxy -> container; identified by the socket,
not by timing), lets both legs close, and records them.

`Legs` plugs into the live run as hooks (which frames are the legs', how a leg packet
is labelled in the pcapng) and as one more step (the connection).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flowtrace.endpoints.netns import run_in_netns
from flowtrace.endpoints.sockets import connections_to, fd_connected_from
from flowtrace.model import Address, Headers, Packet, Sighting
from flowtrace.topology.proxy import ProxyLeg

#: How long a connection flowtrace opens through the proxy waits at most for the proxy's leg.
LEG_WAIT_S = 2.0

Endpoint = tuple[str, int]


def pick_leg2(new: dict[Endpoint, int], accepted: int | None) -> tuple[Endpoint | None, str | None]:
    """Which of the proxy's new connections to the container carries ours, and a caveat.

    One new connection: that one.  Several (other clients at the same moment): the
    proxy dials right after it accepts, so the one whose descriptor follows the
    accepted connection's comes first; the caveat says so.
    """
    if not new:
        return None, None
    if len(new) == 1:
        return next(iter(new)), None
    ordered = sorted(new.items(), key=lambda item: item[1])
    after = [item for item in ordered if accepted is not None and item[1] > accepted]
    end, fd = (after or ordered)[0]
    return end, (
        f"the proxy opened {len(new)} connections to the container meanwhile (other clients); "
        f"leg 2 is the one on fd {fd}, the first after the fd of the connection it accepted "
        f"from flowtrace ({accepted})"
    )


@dataclass(frozen=True)
class LegResult:
    """What a connection through the proxy showed: each leg's client end, or why not."""

    client: Endpoint | None  # leg 1: flowtrace's socket
    proxy_side: tuple[Endpoint, ...]  # leg 2: the proxy's socket to the container
    problem: str | None = None


def connect_through(leg: ProxyLeg, src_netns: str, dst_ip: str, dst_port: int) -> LegResult:
    """Open a real TCP connection from the source namespace, see the proxy dial on, close.

    The proxy's leg-2 socket is the one of its connections to the container that was
    not there before ours: identified by the proxy's own socket, not by timing.
    """
    pid = leg.listener.pid or 0
    target = (leg.proxy.container_ip, leg.proxy.container_port)
    before = set(connections_to(pid, *target))
    family = socket.AF_INET6 if ":" in dst_ip else socket.AF_INET
    sock = run_in_netns(src_netns, socket.socket, family, socket.SOCK_STREAM)
    try:
        sock.settimeout(LEG_WAIT_S)
        try:
            sock.connect((dst_ip, dst_port))
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else "timed out"
            return LegResult(None, (), f"connecting to {Address(dst_ip, dst_port)} failed: {why}")
        client: Endpoint = sock.getsockname()[:2]
        deadline = time.monotonic() + LEG_WAIT_S
        new: dict[Endpoint, int] = {}
        while time.monotonic() < deadline:
            now = connections_to(pid, *target)
            new = {end: fd for end, fd in now.items() if end not in before}
            if new:
                break
            time.sleep(0.005)
        end, caveat = pick_leg2(new, fd_connected_from(pid, client))
        if end is None:
            return LegResult(
                client,
                (),
                f"docker-proxy (pid {pid}) opened no connection to {target[0]}:{target[1]} "
                f"within {LEG_WAIT_S:g} s",
            )
        return LegResult(client, (end,), caveat)
    finally:
        sock.close()


class Legs:
    """A trace's part in a docker-proxy connection: which frames are the legs', and them.

    The run keeps only frames of its probes (their marks) and of the two connections
    this knows the ends of, so other clients of the same proxy or container never enter
    the trace.
    """

    def __init__(
        self,
        leg: ProxyLeg,
        src_netns: str,
        server: Endpoint,
        marks: Iterable[int],
        timeout_s: float,
        client_points: Sequence[str],
    ) -> None:
        self.leg = leg
        self.src_netns = src_netns
        self.server = server
        self.marks = set(marks)
        self.client_points = list(client_points)
        #: (address, port) of flowtrace's client socket and of the proxy's leg-2 socket.
        self.ends: set[Endpoint] = set()
        self.result: LegResult | None = None
        # the Step: wait for both legs to close, at least 0.2 s
        self.timeout_s = max(timeout_s, 0.2)
        self.settle_s = 0.01  # then two block-retire periods for the last ACKs

    def capture_filter(self, probes: str) -> str:
        """The probes' filter, widened to both legs' connections."""
        return f"({probes}) or {self.leg.capture_filter(*self.server)}"

    def keeps(self, h: Headers | None) -> bool:
        """A probe's packet (its mark), or a packet of one of the legs flowtrace opened."""
        if h is None:
            return False
        if h.proto != 6:  # an ICMP error (the filter lets no other through): about ours?
            return h.inner is not None and h.inner.proto == 6 and self.keeps(h.inner)
        if (h.src, h.sport) in self.ends or (h.dst, h.dport) in self.ends:
            return True
        ack = ((h.tcp_ack or 0) - 1) & 0xFFFFFFFF
        return bool({h.tcp_seq, ((h.tcp_seq or 0) - 1) & 0xFFFFFFFF, ack} & self.marks)

    def label(self, pkt: Packet) -> str | None:
        """Which leg a packet is on, in words (the end of its pcapng comments)."""
        h = pkt.first.headers
        ends = {(h.src, h.sport), (h.dst, h.dport)}
        pid = self.leg.listener.pid
        if not ends & self.ends:
            return None
        if self.server in ends:
            return f"docker-proxy leg 1, client -> proxy pid {pid}"
        return f"docker-proxy leg 2, proxy pid {pid} -> container"

    # --- the Step ---------------------------------------------------------------------------

    def send(self) -> None:
        """Connect through the proxy for real and learn both legs' ends."""
        self.result = connect_through(self.leg, self.src_netns, *self.server)
        if self.result.client is not None:
            self.ends.add(self.result.client)
        self.ends.update(self.result.proxy_side)

    def answered(self, pending: Sequence[Sighting]) -> bool:
        """Every end of both legs sent its FIN (or a RST), on what was seen so far."""
        closing = {
            (s.src, s.sport)
            for s in pending
            if s.headers.proto == 6 and (s.headers.tcp_flags or 0) & 0x05
        }
        return bool(self.ends) and len(closing) >= 2 * len(self.ends)

    def settled(self, pending: Sequence[Sighting]) -> bool:
        return True

    # --- what the legs were -------------------------------------------------------------------

    def summary(self, packets: Sequence[Packet]) -> dict[str, object] | None:
        """The trace's meta["proxy"]: the proxy, and each leg's ends, points and packets
        (None when the run ended before the connection was made)."""
        result = self.result
        if result is None:
            return None

        def ids(ends: set[Endpoint]) -> list[int]:
            return [
                p.packet_id
                for p in packets
                if (p.first.src, p.first.sport) in ends or (p.first.dst, p.first.dport) in ends
            ]

        listener, command = self.leg.listener, self.leg.proxy
        target = str(Address(command.container_ip, command.container_port))
        client = set() if result.client is None else {result.client}
        legs = [
            {
                "leg": 1,
                "what": "client -> docker-proxy",
                "from": _text(result.client),
                "to": _text(self.server),
                "points": self.client_points,
                "packets": ids(client),
            },
            {
                "leg": 2,
                "what": "docker-proxy -> container",
                "from": ", ".join(_text(end) or "" for end in result.proxy_side) or None,
                "to": target,
                "points": [p.id for p in self.leg.points],
                "packets": ids(set(result.proxy_side)),
            },
        ]
        return {
            "pid": listener.pid,
            "cmdline": listener.cmdline,
            "listen": str(listener.address),
            "container": self.leg.container,
            "target": target,
            "legs": legs,
            "problem": result.problem,
        }


def _text(end: Endpoint | None) -> str | None:
    return None if end is None else str(Address(*end))
