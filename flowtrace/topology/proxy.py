"""Who listens on a host port: Docker's bindings, and a docker-proxy's second leg, planned.

With Docker's default userland-proxy=true, a connection to a published port that no
DNAT rule rewrites (from the host to 127.0.0.1, or from a container to its bridge's
gateway address) is accepted by a `docker-proxy` process listening on the port, which
then opens a connection of its own to the container: two TCP connections, two legs.

The listening socket is found in /proc/net/tcp (address and port -> socket inode) and
its process by the `socket:[inode]` link among /proc/PID/fd (endpoints.sockets).  Here
the plan: which process listens, and the points of its leg to the container; run.legs
follows both legs of a real connection.  Pure parsing is in topology.published.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowtrace.endpoints.docker import docker_available, running_containers
from flowtrace.endpoints.resolve import host_namespace
from flowtrace.endpoints.sockets import owner_of, process_sockets
from flowtrace.model import Address, Point, ip_version
from flowtrace.topology.path import LiveView, PathPlan, plan_path
from flowtrace.topology.published import (
    ProxyCommand,
    binding_serves,
    listener_for,
    output_dnat_applies,
    parse_proxy_cmdline,
)


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

    @property
    def address(self) -> Address:
        return Address(self.ip, self.port)

    def describe(self) -> str:
        who = f"pid {self.pid} ({self.cmdline})" if self.pid else "a socket of no process we see"
        return f"{who} listens on {self.address}"


@dataclass(frozen=True)
class ProxyLeg:
    """A docker-proxy that will carry the trace's connection, and the points of its leg 2."""

    listener: Listener
    proxy: ProxyCommand
    #: host -> bridge -> veth -> container eth0, as `flowtrace path host CONTAINER_IP` walks it.
    points: tuple[Point, ...]
    container: str | None = None

    def capture_filter(self, dst_ip: str, dst_port: int) -> str:
        """Both legs' packets: client <-> dst:port, and proxy <-> container ip:port.

        libpcap's `tcp` and `port` cover IPv6 (only its `tcp[]` reads IPv4 alone)."""
        return (
            f"(tcp and host {dst_ip} and port {dst_port}) or "
            f"(tcp and host {self.proxy.container_ip} and port {self.proxy.container_port})"
        )

    @property
    def accepted_by(self) -> str:
        """Who answers the SYN, in the verdict's words."""
        return f"docker-proxy pid {self.listener.pid} (listening on {self.listener.address})"


def find_listener(ip: str, port: int) -> Listener | None:
    """The host's socket listening for ip:port and its process, or None."""
    sock = listener_for(process_sockets("self"), ip, port)
    if sock is None:
        return None
    owner = owner_of(sock.inode)
    if owner is None:
        return Listener(sock.local_ip, sock.local_port, sock.inode, None)
    argv = tuple(owner.cmdline.split())  # docker-proxy's arguments hold no spaces
    return Listener(sock.local_ip, sock.local_port, sock.inode, owner.pid, argv)


# --- Docker's bindings and the host's listeners, for a planned path ----------------------


def bindings(
    kind: str, port: int, containers: Callable[[], list[Any]] | None = None
) -> list[tuple[Any, int, str, int]]:
    """(container, container port, host ip, host port) of running containers' `port`/kind;
    `containers` gives another host's running containers (default: this engine's)."""
    if containers is None:
        if not docker_available():
            return []
        containers = running_containers
    found = []
    for c in containers():
        for key, published in c.ports.items():
            cport, _, proto = key.partition("/")
            found += [
                (c, int(cport), host_ip, host_port)
                for host_ip, host_port in published
                if proto == kind and host_port == port
            ]
    return found


def binding_target(
    kind: str, ip: str, port: int, containers: Callable[[], list[Any]] | None = None
) -> tuple[str, int, str] | None:
    """Docker's bindings for the port that take the address (no rules to read)."""
    if not output_dnat_applies(ip):
        return None
    family = ip_version(ip)
    for c, cport, host_ip, _ in bindings(kind, port, containers):
        addresses = c.addresses6 if family == 6 else c.addresses
        target = next(iter(addresses.values()), None)
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
    for c, cport, host_ip, _ in bindings(kind, port):
        if ip_version(host_ip) != ip_version(ip):
            continue  # a binding of one family says nothing about an address of the other
        if not binding_serves(host_ip, ip):
            return (
                f"container {c.name} publishes port {port} (-> {cport}/{kind}) on {host_ip} "
                f"only: Docker's DNAT rule matches -d {host_ip} and its docker-proxy listens on "
                f"{host_ip}, so a packet for {Address(ip, port)} is not rewritten and the host's "
                "own stack, where nothing listens there, answers"
            )
    return None


def proxy_leg(view: LiveView, plan: PathPlan, port: int) -> ProxyLeg | None:
    """When the host's own stack takes the SYN: who listens there (a docker-proxy: leg 2)."""
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
        loopback = "::1/128" if ip_version(plan.dst_ip) == 6 else "127.0.0.0/8"
        why = f"Docker's nat OUTPUT jumps to its DNAT rules only for ! -d {loopback}"
    else:
        why = "the SYN comes in from a Docker bridge, and the DOCKER chain returns for those"
    target = Address(command.container_ip, command.container_port)
    plan.notes.append(
        f"no DNAT rewrites {Address(plan.dst_ip, port)} ({why}): docker-proxy pid "
        f"{listener.pid} listens on {listener.address} and carries the connection to {to} "
        f"({target}) over a connection of its own: " + " -> ".join(p.id for p in leg2.points)
    )
    return ProxyLeg(listener, command, tuple(leg2.points), container)
