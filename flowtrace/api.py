"""The library face: plain values in, model objects out, for the CLI and notebooks.

A trace's stages run in order, each in its own room: endpoints (what was typed) ->
topology (the path, from the kernel's state) -> capture (every point ready) -> probe
-> correlate -> outputs; run/ holds the live run that drives them.  Everything heavy
is imported when a function is called, so `import flowtrace` stays instant.

Every function that names containers takes `engine` ("docker", "podman") and
`context` (a Docker context's name); with neither, the engine is found as the docker
CLI finds it (DOCKER_HOST, DOCKER_CONTEXT, the current context, Docker's socket), with
Podman as the fallback (flowtrace.endpoints.engines).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowtrace.endpoints.engines import EngineChoice, using
from flowtrace.model import Point, PointStats, ProbeKind, Trace, TraceOptions
from flowtrace.model.dns import DnsLookup

if TYPE_CHECKING:
    from flowtrace.endpoints.host_spec import HostSpec
    from flowtrace.run.capture import CaptureResult

__all__ = ["TraceOptions", "capture", "dns_lookup", "load", "path", "run_trace", "trace"]


def path(
    src: str,
    dst: str,
    kind: ProbeKind = "icmp",
    family: int | None = None,
    engine: str | None = None,
    context: str | None = None,
    hosts: Sequence[str] = (),
) -> tuple[list[Point], list[str]]:
    """The observation points a packet from src to dst crosses, and notes on the way.

    `family`: 4 or 6 (as -4/-6), None for the one the destination's addresses rank first.
    `hosts`: `ALIAS=URL` for other Docker hosts (endpoints NAME@ALIAS); a Docker
    context's name works as HOST without one (across hosts IPv4 only: -6 is refused).
    """
    from flowtrace.run.hosts import names_hosts
    from flowtrace.topology.route import resolve_route

    aliases = _host_specs(hosts)
    with using(EngineChoice(engine, context)):
        if not names_hosts((src, dst), aliases):
            route = resolve_route(src, dst, kind, family)
            notes = list(route.src.notes) + list(route.dst.notes) + route.plan.notes
            if route.family_reason:
                notes.insert(0, f"address family: {route.family_reason}")
            return route.plan.points, notes
        from flowtrace.endpoints.hosts import HostSet
        from flowtrace.topology.hostroute import refuse_ipv6_across, resolve_host_route

        refuse_ipv6_across(family)
        with HostSet(aliases) as connected:
            across = resolve_host_route(src, dst, kind, connected)
            notes = list(across.src.notes) + list(across.dst.notes) + across.plan.notes
            return across.plan.points, notes


def _host_specs(hosts: Sequence[str]) -> list[HostSpec]:
    from flowtrace.endpoints.host_spec import parse_host_option

    return [parse_host_option(text) for text in hosts]


def rules(
    src: str, dst: str, kind: ProbeKind | None = None, family: int | None = None
) -> dict[str, Any]:
    """`flowtrace rules`: the way a packet of `kind` from src to dst would take through every
    firewall on the path, hook by hook, and its reply's; sends nothing.

    `family`: 4 or 6 (as -4/-6), None for the one the destination's addresses rank first.

    Returns the document `--json` prints (README: "`flowtrace rules`").
    """
    from flowtrace._version import __version__
    from flowtrace.topology.netfilter import PacketView
    from flowtrace.topology.route import probe_kind_of, resolve_route
    from flowtrace.topology.rulepath import segments_of, walk_path
    from flowtrace.topology.rulesdoc import rules_document

    chosen: ProbeKind = kind or probe_kind_of(dst)
    route = resolve_route(src, dst, chosen, family)
    plan = route.plan
    ipv6 = ":" in route.dst_ip
    segments = segments_of(plan.points, plan.destination, ipv6)
    number = {"icmp": 58 if ipv6 else 1, "tcp": 6, "udp": 17}[chosen]
    packet = PacketView(
        number,
        plan.src_ip,
        route.dst_ip,
        None,
        route.dst_port,
        icmp_type=(128 if ipv6 else 8) if chosen == "icmp" else None,
    )
    walked = walk_path(segments, packet, arrives=plan.destination is not None)
    notes = [*route.src.notes, *route.dst.notes, *plan.notes]
    if chosen != "icmp":
        notes.append(
            f"the {chosen} source port is not known before a socket is opened: rules that "
            "match on it are shown as maybe"
        )
    doc = rules_document(
        walked,
        src=src,
        dst=dst,
        kind=chosen,
        dst_ip=route.dst_ip,
        dst_port=route.dst_port,
        points=[p.id for p in plan.points],
        notes=notes,
    )
    return {"flowtrace": __version__, **doc}


def trace(
    src: str,
    dst: str,
    kind: ProbeKind = "icmp",
    count: int = 1,
    interval: float = 0.2,
    timeout: float = 2.0,
    output_dir: str | Path | None = None,
    record: bool = True,
    on_probe: Callable[[int], None] | None = None,
    family: int | None = None,
    rules: str = "model",
    engine: str | None = None,
    context: str | None = None,
    hosts: Sequence[str] = (),
) -> Trace:
    """Send `count` marked probes from src to dst and follow each one hop by hop.

    `family`: 4 or 6 (as -4/-6), None for the one the destination's addresses rank first.

    Endpoints on other Docker hosts are NAME@HOST (a Docker context, or an alias given in
    `hosts` as "ALIAS=URL"; IPv4 only).  `rules="kernel"`: also the kernel's own nftables
    trace of the probes in every namespace on the path, and its drop reasons
    (`trace.meta["kernel"]`).
    """
    options = TraceOptions(
        kind=kind,
        count=count,
        interval=interval,
        timeout=timeout,
        output_dir=Path(output_dir) if output_dir is not None else None,
        record=record,
        command=f"flowtrace {'ping' if kind == 'icmp' else kind} {src} {dst}"
        + (f" --rules {rules}" if rules != "model" else ""),
        rules=rules,
        family=family,
    )
    return run_trace(src, dst, options, on_probe, EngineChoice(engine, context), hosts)


def run_trace(
    src: str,
    dst: str,
    options: TraceOptions,
    on_probe: Callable[[int], None] | None = None,
    engine: EngineChoice | None = None,
    hosts: Sequence[str] = (),
) -> Trace:
    """A trace with options already gathered (the CLI's way in)."""
    from flowtrace.run import trace as tracing

    with using(engine):
        return tracing.run_trace(src, dst, options, on_probe, _host_specs(hosts))


def capture(
    src: str | None = None,
    dst: str | None = None,
    points: Sequence[str] = (),
    filter_expr: str | None = None,
    duration: float | None = None,
    count: int | None = None,
    output_dir: str | Path | None = None,
    on_tick: Callable[[list[PointStats], float], None] | None = None,
    command: str = "",
    on_ready: Callable[[list[Point], Path], None] | None = None,
    engine: str | None = None,
    context: str | None = None,
) -> CaptureResult:
    """Record everything matching on the points between src and dst (or the named ones)."""
    from flowtrace.run import capture as capturing

    with using(EngineChoice(engine, context)):
        return capturing.capture(
            src, dst, points, filter_expr, duration, count, output_dir, on_tick, command, on_ready
        )


def load(path: str | Path | Sequence[str | Path]) -> Trace:
    """Open a recorded pcap set (a folder, a pcapng, or several pcap files) as a Trace."""
    from flowtrace.analyze import analyze

    return analyze(path).trace


def dns_lookup(
    src: str,
    name: str,
    qtype: str = "A",
    server: str | None = None,
    timeout: float = 2.0,
    output_dir: str | Path | None = None,
    record: bool = True,
    command: str = "",
    rules: str = "model",
    engine: str | None = None,
    context: str | None = None,
) -> DnsLookup:
    """Look `name` up from `src` as its resolver would and follow the query and the answer.

    `rules="kernel"`: also the kernel's own nftables trace of the query and the answer
    (`lookup.meta["kernel"]`).
    """
    from flowtrace.run.dns import lookup

    with using(EngineChoice(engine, context)):
        return lookup(src, name, qtype, server, timeout, output_dir, record, command, rules)
