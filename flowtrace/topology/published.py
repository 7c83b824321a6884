"""Published ports: which of Docker's bindings serve an address, and who listens on it.

Docker (with its default userland-proxy=true) makes two things for `-p [IP:]HOST:PORT`:
a DNAT rule in its nat chain DOCKER (`-d IP` when the binding names an address), and a
`docker-proxy` process listening on IP:HOST.  Which one carries a connection depends on
where it comes from:

* from another namespace (the outside host, a container on another bridge): PREROUTING
  jumps to DOCKER for every local address, the DNAT rewrites it;
* from the host itself: OUTPUT jumps to DOCKER only for `! -d 127.0.0.0/8`, so a
  connection to 127.0.0.1 is not rewritten and reaches the docker-proxy listening on the
  port, which opens a second connection of its own to the container.

Everything here is pure (values in, values out) so it is tested on recorded input;
/proc/net/tcp is parsed by endpoints.sockets, and the live reads (`/proc/PID/fd`,
`/proc/PID/cmdline`) are in flowtrace.proxy.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from flowtrace.endpoints.sockets import TCP_LISTEN, SocketEntry
from flowtrace.topology.netfilter import Firewall, NatRuleset, PacketView, run_hook


def binding_serves(host_ip: str, dst_ip: str) -> bool:
    """Does a binding on host_ip ("" or 0.0.0.0: every IPv4 address; `::` every IPv6
    address) take dst_ip?

    Docker programs its IPv4 DNAT rules for IPv4 bindings only and its IPv6 ones (with
    ip6tables on) for `::` bindings: each is the other's twin, and Docker 20.10 may give
    them different random ports.
    """
    dst = ipaddress.ip_address(dst_ip)
    wildcard = ("", "0.0.0.0") if dst.version == 4 else ("::",)
    if host_ip in wildcard:
        return True
    try:
        return ipaddress.ip_address(host_ip) == dst
    except ValueError:
        return False


def output_dnat_applies(dst_ip: str) -> bool:
    """From the host itself: Docker's `-A OUTPUT ! -d 127.0.0.0/8 ... -j DOCKER`."""
    return not ipaddress.ip_address(dst_ip).is_loopback


def listener_for(sockets: list[SocketEntry], ip: str, port: int) -> SocketEntry | None:
    """The listening socket that takes a connection to ip:port (an exact address first).

    Unlike endpoints.sockets.bound_socket, a `::` listener does not count for an IPv4
    address: docker-proxy's IPv6 listeners are IPv6-only (Go sets IPV6_V6ONLY), and
    Docker 20.10 may even give them another random port than the IPv4 one.
    """
    candidates = [s for s in sockets if s.state == TCP_LISTEN and s.local_port == port]
    for sock in candidates:
        if sock.local_ip == ip:
            return sock
    for sock in candidates:
        if sock.local_ip in ("0.0.0.0", "::") and binding_serves(sock.local_ip, ip):
            return sock
    return None


@dataclass(frozen=True)
class ProxyCommand:
    """What a docker-proxy was started to do (its command line)."""

    proto: str
    host_ip: str
    host_port: int
    container_ip: str
    container_port: int


def parse_proxy_cmdline(argv: list[str]) -> ProxyCommand | None:
    """What `docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 8080 -container-ip
    172.17.0.4 -container-port 80` forwards.

    None when argv is not a docker-proxy's (or lacks one of the five settings).
    """
    if not argv or not argv[0].rsplit("/", 1)[-1].startswith("docker-proxy"):
        return None
    values: dict[str, str] = {}
    args = argv[1:]
    for i, arg in enumerate(args):
        name, eq, value = arg.lstrip("-").partition("=")
        if eq:
            values[name] = value
        elif arg.startswith("-") and i + 1 < len(args):
            values[name] = args[i + 1]
    try:
        return ProxyCommand(
            values["proto"],
            values["host-ip"],
            int(values["host-port"]),
            values["container-ip"],
            int(values["container-port"]),
        )
    except (KeyError, ValueError):
        return None


def predict_dnat(
    ruleset: Firewall | NatRuleset,
    proto: str,
    dst: str,
    dport: int,
    in_iface: str | None,
    local_addresses: frozenset[str],
) -> tuple[str, int, str] | None:
    """The DNAT the nat chains give the first packet to dst:dport, or None.

    Runs the prerouting hook for a packet that came in by `in_iface`, output for one
    the namespace sends itself (in_iface None), as the kernel would: every nat base
    chain of every backend in priority order, jumps, RETURNs (Docker returns early for
    its own bridges) and the `! -d 127.0.0.0/8` of Docker's OUTPUT rule included.
    Returns (address, port, rule text); a DNAT that keeps the port gives dport.  Only
    rules whose matches certainly fit count.
    """
    firewall = ruleset if isinstance(ruleset, Firewall) else Firewall.from_ruleset(ruleset)
    hook = "prerouting" if in_iface is not None else "output"
    number = {"tcp": 6, "udp": 17}.get(proto, 0)
    packet = PacketView(number, None, dst, None, dport, in_iface, None, "NEW", local_addresses)
    visit, _ = run_hook(firewall, hook, packet)
    for rewrite in visit.rewrites:
        address, port = rewrite.after
        rule = rewrite.rule
        if rewrite.kind == "DNAT" and rule is not None and rule.target == "DNAT" and address:
            return address, port if port is not None else dport, rule.shown
    return None
