"""A trace across hosts, as a run records it: which hosts, their engines, their clocks.

A trace is across hosts when an endpoint names one (`c2@hostb`) or `--host` names any;
then run.trace resolves its route with topology.hostroute, inside a HostSet (the hosts'
helpers, removed when it ends), and the loop takes the remote points' frames from their
agents, already on this host's clock.  What the set and the output say about the hosts
is made here: the manifest's and --json's `hosts` (every host with its engine and its
clock offset with the bound), `tunnels` (each overlay crossing with its VNI and
network), and the pcapng interface descriptions, which carry the offset applied.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flowtrace.correlate.clocks import SAME_CLOCK
from flowtrace.endpoints.host_spec import HostSpec, split_host
from flowtrace.endpoints.resolve import split_port
from flowtrace.model import Point
from flowtrace.topology.route import Route

if TYPE_CHECKING:  # a trace on this host alone loads neither (connecting, overlays)
    from flowtrace.endpoints.hosts import RemoteHost
    from flowtrace.topology.crossing import TunnelHop

#: How the manifest and --json name this host (the controller's).
LOCAL = "local"


def names_hosts(specs: Sequence[str], aliases: Sequence[HostSpec]) -> bool:
    """Whether a trace between these endpoints crosses hosts (or may: `--host` given)."""
    if aliases:
        return True
    for spec in specs:
        name, _ = split_port(spec.strip())
        if split_host(name)[1] is not None:
            return True
    return False


def _local_engine() -> dict[str, Any]:
    """This host's engine, as the trace asked it (none when no point here needed it)."""
    from flowtrace.endpoints import engines

    return engines.used_meta() or {}


def hosts_record(route: Route, hosts: Mapping[str, RemoteHost]) -> list[dict[str, Any]]:
    """Every host the route's points are on, with its engine and clock (`hosts` in the
    manifest and --json); this host's clock is the reference."""
    names = list(dict.fromkeys(p.netns.host for p in route.plan.points))
    found = []
    for name in names:
        if name is None:
            found.append(
                {
                    "name": LOCAL,
                    "hostname": os.uname().nodename,
                    "engine": _local_engine(),
                    "clock": SAME_CLOCK.as_dict(),
                    "reference": True,
                }
            )
        elif name in hosts:
            found.append(hosts[name].describe())
    return found


def tunnels_record(tunnels: Sequence[TunnelHop]) -> list[dict[str, Any]]:
    return [
        {
            "kind": "vxlan",
            "vni": t.vni,
            "port": t.port,
            "network": t.network,
            "encrypted": t.encrypted,
            "local": t.local,
            "remote": t.remote,
            "from_host": t.from_host or LOCAL,
            "to_host": t.to_host or LOCAL,
            "points": list(t.points),
        }
        for t in tunnels
    ]


def point_descriptions(points: Sequence[Point], hosts: Mapping[str, RemoteHost]) -> dict[str, str]:
    """The pcapng if_description of each point on another host: its own words plus the
    clock offset applied to its times, with the bound."""
    found = {}
    for point in points:
        host = hosts.get(point.netns.host or "")
        if host is not None:
            offset = host.offset
            found[point.id] = (
                f"{point.description} clock_offset_ns={offset.offset_ns} "
                f"clock_error_ns={offset.error_ns} (the offset is applied to these times)"
            )
    return found


def hosts_notes(route: Route, hosts: Mapping[str, RemoteHost]) -> list[str]:
    """One line per host: its engine and clock, as the trace's header shows them."""
    lines = []
    for name in dict.fromkeys(p.netns.host for p in route.plan.points):
        if name is None or name not in hosts:
            continue
        host = hosts[name]
        version = host.engine.get("ServerVersion", "?")
        lines.append(
            f"host {name}: docker {version} at {host.spec.url} ({host.spec.selected_by}); "
            f"its clock {host.offset.label} against this one (the shortest of "
            f"{host.offset.exchanges} round trips, {host.offset.round_trip_ns / 1000:.1f} µs), "
            "applied to its sightings"
        )
    return lines
