"""What the engine's own parts on a path are, in sentences for a trace's or lookup's notes:
netavark's bridges and chains, aardvark-dns (Podman); nothing is added for Docker, whose
parts the other notes already name."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from flowtrace.endpoints import engines, podman
from flowtrace.model import Point


def _podman_networks() -> list[podman.PodmanNetwork]:
    info = engines.used()
    if info is None or info.name != "podman":
        return []
    return podman.networks(engines.api())


def trace_notes(points: Sequence[Point], rules: Iterable[str | None]) -> list[str]:
    """The Podman bridges the path crosses and the netavark chains its rules are in."""
    named = [rule for rule in rules if rule]
    networks = _podman_networks()
    notes: list[str] = []
    for point in points:
        net = podman.network_of_bridge(networks, point.ifname) if point.role == "bridge" else None
        if net is not None and podman.bridge_note(net) not in notes:
            notes.append(podman.bridge_note(net))
    if not named:  # no rule to name (a ping with no NAT): the rule model stays unloaded
        return notes
    from flowtrace.topology.netfilter.owners import rule_notes

    return notes + rule_notes(named, [net.name for net in networks])


def resolver_note(server: str, name: str) -> str | None:
    """The aardvark-dns that answers on a Podman network's gateway, with its record for
    `name`; None when `server` is no Podman network's gateway."""
    net = podman.network_with_gateway(_podman_networks(), server)
    if net is None:
        return None
    return podman.aardvark_note(server, net, podman.aardvark_record(net.name, name), name)
