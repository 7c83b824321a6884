"""Who listens on a host port, and the docker-proxy's second leg.

With Docker's default userland-proxy=true, a connection to a published port that no
DNAT rule rewrites (from the host to 127.0.0.1, or from a container to its bridge's
gateway address) is accepted by a `docker-proxy` process listening on the port, which
then opens a connection of its own to the container: two TCP connections, two legs.

The listening socket is found in /proc/net/tcp (address and port -> socket inode) and
its process by the `socket:[inode]` link among /proc/PID/fd.  The proxy's second leg is
its own socket too: the connection from the proxy's pid to the container's address
that appears when flowtrace connects (a bare SYN never completes a handshake, so the
proxy never dials on for one).  Pure parsing is in topology.published.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowtrace.endpoints.netns import run_in_netns
from flowtrace.endpoints.sockets import SocketEntry, owner_of, parse_proc_net
from flowtrace.model import Headers, Packet, Point, Sighting
from flowtrace.topology.published import ProxyCommand, listener_for, parse_proxy_cmdline

if TYPE_CHECKING:
    from flowtrace.topology.path import LiveView, PathPlan
    from flowtrace.tracer import Tracer

#: Where a connection flowtrace opens through the proxy waits at most for the proxy's leg.
LEG_WAIT_S = 2.0

Endpoint = tuple[str, int]


@dataclass(frozen=True)
class Listener:
    """The process whose socket listens on a host address and port."""

    ip: str  # the address it is bound to (0.0.0.0: all)
    port: int
    inode: int
    pid: int | None
    argv: tuple[str, ...] = ()

    @property
    def cmdline(self) -> str:
        return " ".join(self.argv)

    @property
    def proxy(self) -> ProxyCommand | None:
        return parse_proxy_cmdline(list(self.argv))

    def describe(self) -> str:
        who = f"pid {self.pid} ({self.cmdline})" if self.pid else "a socket of no process we see"
        return f"{who} listens on {self.ip}:{self.port}"


@dataclass(frozen=True)
class ProxyLeg:
    """A docker-proxy that will carry the trace's connection, and the points of its leg 2."""

    listener: Listener
    proxy: ProxyCommand
    #: host -> bridge -> veth -> container eth0, as `flowtrace path host CONTAINER_IP` walks it.
    points: tuple[Point, ...]
    container: str | None = None

    def capture_filter(self, dst_ip: str, dst_port: int) -> str:
        """Both legs' packets: client <-> dst:port, and proxy <-> container ip:port."""
        return (
            f"(tcp and host {dst_ip} and port {dst_port}) or "
            f"(tcp and host {self.proxy.container_ip} and port {self.proxy.container_port})"
        )


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def tcp_sockets(pid: str = "self") -> list[SocketEntry]:
    """IPv4 TCP sockets of the namespace process `pid` is in."""
    return parse_proc_net(_read(f"/proc/{pid}/net/tcp"))


def socket_fds(pid: int) -> dict[int, int]:
    """Socket inode -> file descriptor number, among a process's open files."""
    found: dict[int, int] = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            found[int(link[8:-1])] = int(fd)
    return found


def socket_inodes(pid: int) -> set[int]:
    """The socket inodes among a process's open files."""
    return set(socket_fds(pid))


def find_listener(ip: str, port: int) -> Listener | None:
    """The host's socket listening for ip:port and its process, or None."""
    sock = listener_for(tcp_sockets(), ip, port)
    if sock is None:
        return None
    owner = owner_of(sock.inode)
    if owner is None:
        return Listener(sock.local_ip, sock.local_port, sock.inode, None)
    argv = tuple(owner.cmdline.split())  # docker-proxy's arguments hold no spaces
    return Listener(sock.local_ip, sock.local_port, sock.inode, owner.pid, argv)


def proxy_connections(pid: int, container_ip: str, container_port: int) -> dict[Endpoint, int]:
    """The proxy's own connections to the container: (local address, port) -> its fd."""
    fds = socket_fds(pid)
    return {
        (s.local_ip, s.local_port): fds[s.inode]
        for s in tcp_sockets(str(pid))
        if s.inode in fds and (s.remote_ip, s.remote_port) == (container_ip, container_port)
    }


def accepted_fd(pid: int, client: Endpoint) -> int | None:
    """The proxy's fd of the connection it accepted from `client` (leg 1, its side)."""
    fds = socket_fds(pid)
    for s in tcp_sockets(str(pid)):
        if s.inode in fds and (s.remote_ip, s.remote_port) == client:
            return fds[s.inode]
    return None


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
    before = set(proxy_connections(pid, *target))
    sock = run_in_netns(src_netns, socket.socket, socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(LEG_WAIT_S)
        try:
            sock.connect((dst_ip, dst_port))
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else "timed out"
            return LegResult(None, (), f"connecting to {dst_ip}:{dst_port} failed: {why}")
        client: Endpoint = sock.getsockname()[:2]
        deadline = time.monotonic() + LEG_WAIT_S
        new: dict[Endpoint, int] = {}
        while time.monotonic() < deadline:
            now = proxy_connections(pid, *target)
            new = {end: fd for end, fd in now.items() if end not in before}
            if new:
                break
            time.sleep(0.005)
        end, caveat = pick_leg2(new, accepted_fd(pid, client))
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


# --- Docker's bindings and the host's listeners, for a planned path ----------------------


def bindings(kind: str, port: int) -> list[tuple[Any, int, str, int]]:
    """(container, container port, host ip, host port) of running containers' `port`/kind."""
    from flowtrace.endpoints.docker import docker_available, running_containers

    if not docker_available():
        return []
    found = []
    for c in running_containers():
        for key, bindings in c.ports.items():
            cport, _, proto = key.partition("/")
            found += [
                (c, int(cport), host_ip, host_port)
                for host_ip, host_port in bindings
                if proto == kind and host_port == port
            ]
    return found


def binding_target(kind: str, ip: str, port: int) -> tuple[str, int, str] | None:
    """Docker's bindings for the port that take the address (no rules to read)."""
    from flowtrace.topology.published import binding_serves, output_dnat_applies

    if not output_dnat_applies(ip):
        return None
    for c, cport, host_ip, _ in bindings(kind, port):
        target = next(iter(c.addresses.values()), None)
        if target and binding_serves(host_ip, ip):
            return target, cport, ""
    return None


def unserved_binding(kind: str, ip: str, port: int | None) -> str | None:
    """Why a host port that Docker publishes is closed at this address, or None.

    E.g. `-p 127.0.0.1::80`: the DNAT rule matches `-d 127.0.0.1` and docker-proxy
    listens on 127.0.0.1 only, so a SYN for another host address reaches the host's
    own stack, where nothing listens.
    """
    if port is None or kind == "icmp":
        return None
    from flowtrace.topology.published import binding_serves

    for c, cport, host_ip, _ in bindings(kind, port):
        if ":" in host_ip and ":" not in ip:
            continue  # an IPv6 binding says nothing about an IPv4 address
        if not binding_serves(host_ip, ip):
            return (
                f"container {c.name} publishes port {port} (-> {cport}/{kind}) on {host_ip} "
                f"only: Docker's DNAT rule matches -d {host_ip} and its docker-proxy listens on "
                f"{host_ip}, so a packet for {ip}:{port} is not rewritten and the host's own "
                "stack, where nothing listens there, answers"
            )
    return None


def proxy_leg(view: LiveView, plan: PathPlan, port: int) -> ProxyLeg | None:
    """When the host's own stack takes the SYN: who listens there (a docker-proxy: leg 2)."""
    from flowtrace.endpoints.resolve import host_namespace
    from flowtrace.topology.path import plan_path

    host = host_namespace()
    end = next((p for p in plan.points if p.id == plan.destination), None)
    if end is None or end.netns.inode != host.inode:
        return None
    listener = find_listener(plan.dst_ip, port)
    if listener is None:
        return None
    command = listener.proxy
    if command is None or listener.pid is None or command.proto != "tcp":
        plan.notes.append(f"{listener.describe()}: it answers the SYN itself")
        return None
    leg2 = plan_path(view, host, command.container_ip, command.container_port)
    container = leg2.points[-1].netns.container if leg2.destination else None
    to = f"container {container}" if container else command.container_ip
    if ipaddress.ip_address(plan.dst_ip).is_loopback:
        why = "Docker's nat OUTPUT jumps to its DNAT rules only for ! -d 127.0.0.0/8"
    else:
        why = "the SYN comes in from a Docker bridge, and the DOCKER chain returns for those"
    plan.notes.append(
        f"no DNAT rewrites {plan.dst_ip}:{port} ({why}): docker-proxy pid {listener.pid} "
        f"listens on {listener.ip}:{listener.port} and carries the connection to {to} "
        f"({command.container_ip}:{command.container_port}) over a connection of its own: "
        + " -> ".join(p.id for p in leg2.points)
    )
    return ProxyLeg(listener, command, tuple(leg2.points), container)


# --- following both legs of a trace -------------------------------------------------------


class LegFollower:
    """A trace's part in a docker-proxy connection: which frames are the legs', and them.

    The tracer keeps only frames of its probes (their marks) and of the two
    connections this follower knows the ends of, so other clients of the same proxy
    or container never enter the trace.
    """

    def __init__(self, tracer: Tracer, leg: ProxyLeg) -> None:
        self.tracer = tracer
        self.leg = leg
        route = tracer.route
        self.server: Endpoint = (route.dst_ip, route.dst_port or 0)
        #: (address, port) of flowtrace's client socket and of the proxy's leg-2 socket.
        self.ends: set[Endpoint] = set()
        self.marks = {tracer.probe.seq_mark(seq) for seq in range(tracer.options.count)}
        #: What the legs were, once followed: the trace's meta["proxy"].
        self.summary: dict[str, object] | None = None

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

    def follow(self, session: Any) -> None:
        """Connect through the proxy for real, find its leg-2 socket, record both legs."""
        from flowtrace.tracer import POLL_S, RETIRE_MS

        t = self.tracer
        # the probes' frames first, so the legs' come in a chunk of their own
        t._absorb(session.frames(since=t._taken))
        t._flush_chunk()
        first_packet = t._next_packet_id
        result = connect_through(self.leg, t.route.src.netns.path, *self.server)
        if result.client is not None:
            self.ends.add(result.client)
        self.ends.update(result.proxy_side)
        deadline = time.monotonic() + max(t.options.timeout, 0.2)
        while time.monotonic() < deadline:
            t._absorb(session.frames(since=t._taken))
            if self._closed(t.sightings[t._decoded_upto :]):
                time.sleep(2 * RETIRE_MS / 1000)  # the last ACKs
                break
            time.sleep(POLL_S)
        t._absorb(session.frames(since=t._taken))
        t._flush_chunk()
        self.summary = self._describe(result, [p for p in t.packets if p.packet_id >= first_packet])

    def _closed(self, sightings: list[Sighting]) -> bool:
        """Every end of both legs sent its FIN (or a RST), on what was seen so far."""
        closing = {
            (s.src, s.sport)
            for s in sightings
            if s.headers.proto == 6 and (s.headers.tcp_flags or 0) & 0x05
        }
        return bool(self.ends) and len(closing) >= 2 * len(self.ends)

    def _describe(self, result: LegResult, packets: list[Packet]) -> dict[str, object]:
        def ids(ends: set[Endpoint]) -> list[int]:
            return [
                p.packet_id
                for p in packets
                if (p.first.src, p.first.sport) in ends or (p.first.dst, p.first.dport) in ends
            ]

        listener, command = self.leg.listener, self.leg.proxy
        target = f"{command.container_ip}:{command.container_port}"
        client = set() if result.client is None else {result.client}
        legs = [
            {
                "leg": 1,
                "what": "client -> docker-proxy",
                "from": _text(result.client),
                "to": _text(self.server),
                "points": [p.id for p in self.tracer.route.plan.points],
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
            "listen": f"{listener.ip}:{listener.port}",
            "container": self.leg.container,
            "target": target,
            "legs": legs,
            "problem": result.problem,
        }


def _text(end: Endpoint | None) -> str | None:
    return None if end is None else f"{end[0]}:{end[1]}"
