"""What a trace across hosts adds to its views: clock bounds on hops, tunnels, host names.

A hop between two points on one host is timed by one kernel clock; a hop between hosts
by two, each put on the controller's clock with an offset known within a bound (the
manifest's `hosts[].clock.error_ns`), so its time is shown with the sum of both bounds.
Read from a Trace's meta, so a trace and a recorded set (flowtrace.load) show the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowtrace.model import Point, Sighting, Trace, Tunnel


def clock_errors(meta: Mapping[str, Any]) -> dict[str | None, int]:
    """Each host's clock bound (ns) by the name its points carry (None: this host)."""
    found: dict[str | None, int] = {}
    for host in meta.get("hosts") or []:
        if not isinstance(host, Mapping):
            continue
        name = host.get("name")
        clock = host.get("clock") or {}
        key = None if host.get("reference") else name
        found[key] = int(clock.get("error_ns") or 0)
    return found


def host_of(points: Mapping[str, Point], point_id: str) -> str | None:
    point = points.get(point_id)
    return point.netns.host if point is not None else None


def hop_error(points: Mapping[str, Point], errors: Mapping[str | None, int], a: str, b: str) -> int:
    """The bound on a hop's time: 0 on one host, the two hosts' bounds added across."""
    ha, hb = host_of(points, a), host_of(points, b)
    if ha == hb:
        return 0
    return errors.get(ha, 0) + errors.get(hb, 0)


def delta_text(delta_ns: int, error_ns: int) -> str:
    """`12.3` on one clock, `12.3±52.7` across two."""
    text = f"{delta_ns / 1000:,.1f}"
    return f"{text}±{error_ns / 1000:,.1f}" if error_ns else text


def tunnel_names(meta: Mapping[str, Any]) -> dict[int, str]:
    """VNI -> overlay network name, from the trace's tunnels."""
    names: dict[int, str] = {}
    for tunnel in meta.get("tunnels") or []:
        if isinstance(tunnel, Mapping) and tunnel.get("network"):
            names[int(tunnel["vni"])] = str(tunnel["network"])
    return names


def outer_text(outer: Tunnel, names: Mapping[int, str]) -> str:
    """`VXLAN vni 4097 (overlay fthover) 198.18.20.2:41000 -> 198.18.20.3:4789`."""
    network = names.get(outer.vni)
    named = f" (overlay {network})" if network else ""
    return (
        f"outer: VXLAN vni {outer.vni}{named} "
        f"{outer.src}:{outer.sport} -> {outer.dst}:{outer.dport}"
    )


def outer_dict(s: Sighting) -> dict[str, Any] | None:
    """The encapsulation a sighting was seen in (JSON), or None."""
    outer = s.headers.outer
    if outer is None:
        return None
    return {
        "kind": outer.kind,
        "vni": outer.vni,
        "src": outer.src,
        "dst": outer.dst,
        "sport": outer.sport,
        "dport": outer.dport,
        "ttl": outer.ttl,
        "ip_id": outer.ip_id,
    }


def host_lines(trace: Trace) -> list[str]:
    """One line per host of a trace across hosts, for the terminal's header."""
    lines = []
    hosts = trace.meta.get("hosts")
    for host in hosts if isinstance(hosts, list) else []:
        if not isinstance(host, Mapping):
            continue
        engine = host.get("engine") or {}
        version = f"docker {engine.get('version')}" if engine.get("version") else "no engine"
        if host.get("reference"):
            lines.append(f"host {host.get('name')}: {version}, the reference clock")
            continue
        clock = host.get("clock") or {}
        lines.append(
            f"host {host.get('name')}: {version} at {host.get('url')}, clock "
            f"{int(clock.get('offset_ns') or 0) / 1000:+.1f} µs ± "
            f"{int(clock.get('error_ns') or 0) / 1000:.1f} µs (applied)"
        )
    return lines
