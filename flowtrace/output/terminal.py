"""What a person reads in the terminal: hop tables, NAT rewrites, verdicts, a summary.

Built with rich; when stdout is not a terminal rich prints plain text of the same
shape, so the output pipes into less or a file cleanly.  Consoles are made with
markup=False: what is printed quotes the system (rules, addresses), and rich would take
an IPv6 address in brackets, `[fd00::2]:80`, for a style tag and drop it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from flowtrace.correlate.faults import fault_line
from flowtrace.correlate.stats import median
from flowtrace.model import (
    ICMP_KINDS,
    Address,
    Headers,
    NatEvent,
    Packet,
    Point,
    Sighting,
    Trace,
    Verdict,
    is_echo_reply,
    is_echo_request,
)
from flowtrace.output.hostview import (
    clock_errors,
    delta_text,
    hop_error,
    host_lines,
    outer_text,
    tunnel_names,
)
from flowtrace.output.kernelview import kernel_lines

FULL_TABLES_UP_TO = 3  # probes shown hop by hop; later ones get one line each
FLOWS_SHOWN = 20  # flows and NAT rewrites listed by `flowtrace analyze`; the rest counted


def _us(ns: int) -> str:
    return f"{ns / 1000:,.1f}"


def _echo(h: Headers) -> bool:
    return is_echo_request(h) or is_echo_reply(h)


def endpoint_text(s: Sighting, which: str, icmp_id: int | None = None) -> str:
    """An address with its port; an ICMP id only where it differs from the packet's first."""
    h = s.headers
    ip = h.src if which == "src" else h.dst
    port = h.sport if which == "src" else h.dport
    if port is not None:
        return str(Address(ip, port))
    if h.icmp_id is not None and h.icmp_id != icmp_id and _echo(h):
        return f"{ip} (id {h.icmp_id})"
    return ip


def describe(s: Sighting) -> str:
    h = s.headers
    if h.proto in ICMP_KINDS:
        kind = -1 if h.icmp_type is None else h.icmp_type
        text = f"{h.proto_name} {ICMP_KINDS[h.proto].get(kind, f'type {h.icmp_type}')}"
        return text + (f" seq={h.icmp_seq}" if _echo(h) else "")
    if h.proto == 6:
        flags = h.tcp_flags or 0
        names = [n for bit, n in ((2, "SYN"), (16, "ACK"), (4, "RST"), (1, "FIN")) if flags & bit]
        return f"tcp {'+'.join(names) or 'no flags'}"
    return h.proto_name


def packet_table(
    pkt: Packet,
    points: dict[str, Point],
    errors: Mapping[str | None, int] | None = None,
    overlays: Mapping[int, str] | None = None,
) -> Text:
    """One packet hop by hop, as aligned plain lines; a rewrite is shown under its hop.

    Plain lines rather than a table: a NAT line would squeeze a table column into
    unreadable shreds on an 80-column terminal.  Across hosts (`errors`: each host's
    clock bound) a hop between two hosts shows its bound; a sighting inside a tunnel
    shows the outer headers under its row (`overlays`: VNI -> network name).
    """
    first = pkt.first.headers
    title = f"packet {pkt.packet_id}: {pkt.direction}, {describe(pkt.first)}"
    if first.icmp_id is not None and _echo(first):
        title += f" id={first.icmp_id}"
    start = pkt.first.time_ns
    rows = []
    prev: Sighting | None = None
    for i, s in enumerate(pkt.sightings, 1):
        point = points.get(s.point)
        rows.append(
            (
                str(i),
                s.point,
                point.role if point is not None else "",
                _us(s.time_ns - start),
                ""
                if prev is None
                else delta_text(
                    s.time_ns - prev.time_ns, hop_error(points, errors or {}, prev.point, s.point)
                ),
                f"{endpoint_text(s, 'src', first.icmp_id)} -> "
                f"{endpoint_text(s, 'dst', first.icmp_id)}",
            )
        )
        prev = s
    header = ("#", "point", "role", "t µs", "Δ µs", "src -> dst")
    widths = [max(len(r[c]) for r in [*rows, header]) for c in range(len(header))]
    right = {0, 3, 4}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if k in right else c.ljust(w)
            for k, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = Text(title + "\n", style="bold")
    out.append(line(header) + "\n", style="dim")
    indent = sum(widths[:5]) + 2 * 5
    shown: set[int] = set()  # on lo a packet is seen twice at one point: show it once
    for s, row in zip(pkt.sightings, rows, strict=True):
        out.append(line(row) + "\n")
        if s.headers.outer is not None:
            out.append(
                " " * indent + outer_text(s.headers.outer, overlays or {}) + "\n", style="cyan"
            )
        for n, ev in enumerate(pkt.nat):
            if ev.between[1] == s.point and n not in shown:
                shown.add(n)
                out.append(" " * indent + "^ " + ev.label + "\n", style="bold yellow")
    out.rstrip()
    return out


def verdict_line(v: Verdict) -> Text:
    style = {"replied": "green", "refused": "yellow", "delivered": "yellow"}.get(v.outcome, "red")
    rtt = f" in {_us(v.rtt_ns)} µs" if v.rtt_ns is not None else ""
    return Text(f"probe {v.probe + 1}: {v}{rtt}", style=style)


def nat_details(events: Iterable[NatEvent]) -> list[str]:
    lines = []
    for ev in events:
        lines.append(f"{ev.label} between {ev.between[0]} and {ev.between[1]}")
        if ev.reverse_of:
            lines.append(
                f"    the reply's rewrite undoes the {ev.reverse_of} above (same conntrack entry)"
            )
            continue
        if ev.rule:
            lines.append(f"    rule:      {ev.rule}")
        if ev.rule_doubt:
            lines.append(f"               ({ev.rule_doubt})")
        if ev.explanation:
            lines.append(f"    meaning:   {ev.explanation}")
        if ev.conntrack:
            lines.append(f"    conntrack: {ev.conntrack}")
    return lines


def print_hop_stats(trace: Trace, console: Console) -> None:
    """min/median/max per hop, a heading line per direction and packet kind (as analyze's);
    across hosts, a hop between two hosts with its clocks' bound."""
    points = {p.id: p for p in trace.points}
    errors = clock_errors(trace.meta)
    across = bool(errors)
    rows: list[tuple[str, ...]] = []
    group = None
    for (direction, kind, a, b), values in trace.hop_deltas().items():
        if (direction, kind) != group:
            group = (direction, kind)
            rows.append((f"{direction}, {kind}", "", "", "", "", *([""] if across else [])))
        bound = hop_error(points, errors, a, b)
        rows.append(
            (
                f"  {a} -> {b}",
                str(len(values)),
                _us(min(values)),
                _us(int(median(values))),
                _us(max(values)),
                *([f"±{_us(bound)}" if bound else ""] if across else []),
            )
        )
    if rows:
        header = ("hop", "n", "min µs", "median µs", "max µs", *(["clocks µs"] if across else []))
        _print_aligned(console, "per-hop latency", header, rows, frozenset((1, 2, 3, 4, 5)))


def render_path(points: list[Point], notes: Iterable[str], console: Console) -> None:
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("point", no_wrap=True)
    table.add_column("netns", no_wrap=True)
    table.add_column("role", no_wrap=True)
    table.add_column("addresses")
    for i, p in enumerate(points, 1):
        label = p.netns.label
        if p.netns.container and p.netns.container != p.netns.label:
            label += f" (container {p.netns.container})"
        role = p.role + (" (promiscuous)" if p.promisc else "")
        shown = [a for a in p.addresses if not a.lower().startswith("fe80:")]
        table.add_row(str(i), p.id, label, role, ", ".join(shown))
    console.print(table)
    for note in notes:
        console.print(f"note: {note}")


def engine_line(meta: Mapping[str, Any]) -> str | None:
    """`engine: podman 4.3.1 (rootful, netavark) at unix:///...`: the engine that named
    the containers, under a trace's or lookup's title (None when no engine was asked)."""
    engine = meta.get("engine")
    if not isinstance(engine, Mapping):
        return None
    summary = engine.get("summary") or f"{engine.get('name')} {engine.get('version')}"
    return f"engine: {summary}"


def render_trace(trace: Trace, console: Console | None = None) -> None:
    console = console or Console(highlight=False, soft_wrap=True, emoji=False, markup=False)
    points = {p.id: p for p in trace.points}
    header = trace.meta.get("title")
    if header:
        console.print(Text(str(header), style="bold"))
    line = engine_line(trace.meta)
    if line:
        console.print(line)
    family = trace.meta.get("family_reason")
    if family:
        console.print(f"address family: {family}")
    for note in trace.notes:
        console.print(f"note: {note}")
    proxy = trace.meta.get("proxy")
    legs = proxy.get("legs", []) if isinstance(proxy, dict) else []
    if legs:
        console.print("path: " + " -> ".join(legs[0]["points"]))
        console.print("path of docker-proxy's own connection: " + " -> ".join(legs[1]["points"]))
    else:
        console.print("path: " + " -> ".join(p.id for p in trace.points))
    on_legs = {i for leg in legs for i in leg["packets"]}
    by_probe: dict[int | None, list[Packet]] = {}
    for pkt in trace.packets:
        if pkt.packet_id not in on_legs:
            by_probe.setdefault(pkt.probe, []).append(pkt)
    verdicts = {v.probe: v for v in trace.verdicts}
    errors, overlays = clock_errors(trace.meta), tunnel_names(trace.meta)
    shown_events: set[tuple[str, str, str]] = set()
    for probe, packets in sorted(by_probe.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        full = probe is None or probe < FULL_TABLES_UP_TO
        for pkt in packets:
            if full:
                console.print()
                console.print(packet_table(pkt, points, errors, overlays))
        if probe is not None and probe in verdicts:
            if full:
                console.print()
            console.print(verdict_line(verdicts[probe]))
        fresh: list[NatEvent] = []
        for pkt in packets:
            for ev in pkt.nat:
                key = (ev.kind, ev.between[0], ev.between[1])
                if key not in shown_events:
                    shown_events.add(key)
                    fresh.append(ev)
        for line in nat_details(fresh):
            console.print(line, style="yellow")
    for probe, verdict in sorted(verdicts.items()):
        if probe not in by_probe:
            console.print(verdict_line(verdict))
    if isinstance(proxy, dict):
        console.print()
        for line in proxy_lines(proxy, trace.packets):
            console.print(line)
    if trace.faults:
        console.print()
    for fault in trace.faults:
        console.print(f"fault: {fault_line(fault)}", style="red")
    kernel = trace.meta.get("kernel")
    if isinstance(kernel, dict):  # --rules kernel
        console.print()
        for text, style in kernel_lines(kernel):
            console.print(text, style=style or None)
    if len(trace.verdicts) > 1:
        print_hop_stats(trace, console)
    if trace.verdicts:
        answered = sum(1 for v in trace.verdicts if v.answered)
        sent = len(trace.verdicts)
        loss = 100.0 * (sent - answered) / sent
        rtts = [v.rtt_ns for v in trace.verdicts if v.rtt_ns is not None]
        rtt = ""
        if rtts:
            rtt = (
                f", rtt min/median/max {_us(min(rtts))}/{_us(int(median(rtts)))}"
                f"/{_us(max(rtts))} µs"
            )
        console.print()
        noun = "probe" if sent == 1 else "probes"
        console.print(f"{sent} {noun}, {answered} answered, {loss:.0f}% loss{rtt}")
    drops = [s for s in trace.stats if s.drops]
    for s in drops:
        console.print(f"warning: {s.point}: the kernel dropped {s.drops} packets", style="red")
    pcap = trace.meta.get("pcap")
    if pcap:
        console.print(f"pcap set: {pcap}")


def proxy_lines(proxy: dict[str, Any], packets: Sequence[Packet]) -> list[str]:
    """The docker-proxy that carried a connection, and each leg packet by packet."""
    lines = [
        f"docker-proxy carried it: pid {proxy['pid']}, listening on {proxy['listen']}",
        f"    {proxy['cmdline']}",
    ]
    if proxy.get("problem"):
        lines.append(f"the real connection through it: {proxy['problem']}")
    by_id = {p.packet_id: p for p in packets}
    leg_packets = [by_id[i] for leg in proxy["legs"] for i in leg["packets"] if i in by_id]
    start = min((p.first.time_ns for p in leg_packets), default=0)
    for leg in proxy["legs"]:
        what = leg["what"]
        if leg["leg"] == 2 and proxy.get("container"):
            what += f" {proxy['container']}"
        ends = f"{leg['from'] or '?'} -> {leg['to']}"
        lines.append("")
        lines.append(f"leg {leg['leg']}, {what}: {ends} via {' -> '.join(leg['points'])}")
        rows = []
        for number in leg["packets"]:
            pkt = by_id.get(number)
            if pkt is None:
                continue
            where = " -> ".join(dict.fromkeys(s.point for s in pkt.sightings))
            rows.append(
                (
                    str(pkt.packet_id),
                    _us(pkt.first.time_ns - start),
                    describe(pkt.first).removeprefix("tcp "),
                    f"{endpoint_text(pkt.first, 'src')} -> {endpoint_text(pkt.first, 'dst')}",
                    f"{where} ({len(pkt.sightings)} sightings)",
                )
            )
        if rows:
            header = ("packet", "t µs", "flags", "src -> dst", "seen at")
            lines += ["  " + line for line in aligned_lines(header, rows, frozenset({0, 1}))]
        else:
            lines.append("  no packet seen")
    return lines


def aligned_lines(
    header: tuple[str, ...], rows: Sequence[tuple[str, ...]], right: frozenset[int] = frozenset()
) -> list[str]:
    """Rows as plain aligned lines: they never wrap into shreds on a narrow terminal."""
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.rjust(width) if k in right else cell.ljust(width)
            for k, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), *(line(row) for row in rows)]


def _print_aligned(
    console: Console,
    title: str,
    header: tuple[str, ...],
    rows: Sequence[tuple[str, ...]],
    right: frozenset[int] = frozenset(),
) -> None:
    console.print()
    console.print(title, style="bold")
    lines = aligned_lines(header, rows, right)
    console.print(lines[0], style="dim")
    for text in lines[1:]:
        console.print(text)


def _flow_ends(
    proto: str, src: str, sport: int | None, dst: str, dport: int | None
) -> tuple[str, str, str]:
    """Initiator and responder of a flow; an ICMP echo's identifier is not a port."""
    if proto in ("icmp", "icmp6"):
        ident = f" id {sport}" if sport is not None else ""
        return f"{proto}{ident}", src, dst
    return proto, str(Address(src, sport)), str(Address(dst, dport))


def render_analysis(analysis: Any, shown: list[Packet], console: Console) -> None:
    """Summary of an offline analysis: sources, points, some packets, flows, NAT, hop latency."""
    trace = analysis.trace
    console.print(Text(", ".join(analysis.sources), style="bold"))
    ndp = getattr(analysis, "ndp_frames", 0)
    console.print(
        f"{analysis.frames:,} frames ({analysis.undecoded:,} not IP"
        + (f", {ndp:,} NDP" if ndp else "")
        + "), "
        f"{analysis.packet_count:,} packets on {len(trace.points)} "
        + ("point" if len(trace.points) == 1 else "points")
    )
    if analysis.truncated:
        console.print(
            "warning: the file ends inside a block (the writer was killed); "
            "everything before it was read",
            style="red",
        )
    for note in getattr(analysis, "notes", ()):
        console.print(f"note: {note}", style="yellow")
    console.print()
    render_path(list(trace.points), [], console)
    points = {p.id: p for p in trace.points}
    errors, overlays = clock_errors(trace.meta), tunnel_names(trace.meta)
    for line in host_lines(trace):
        console.print(line)
    for pkt in shown:
        console.print()
        console.print(packet_table(pkt, points, errors, overlays))
    if analysis.packet_count > len(shown) and shown:
        console.print()
        console.print(
            f"... and {analysis.packet_count - len(shown):,} more packets "
            "(--packets lists them all, --json writes them)"
        )
    flows = sorted(analysis.flows.values(), key=lambda f: -(f.requests + f.replies))
    if flows:
        rows: list[tuple[str, ...]] = []
        for f in flows[:FLOWS_SHOWN]:
            proto, initiator, responder = _flow_ends(*f.key)
            rows.append(
                (
                    proto,
                    initiator,
                    responder,
                    f"{f.requests:,}",
                    f"{f.replies:,}",
                    ", ".join(sorted(f.nat)) or "-",
                )
            )
        _print_aligned(
            console,
            f"flows ({len(flows):,})",
            ("proto", "initiator", "responder", "requests", "replies", "NAT"),
            rows,
            frozenset((3, 4)),
        )
        if len(flows) > FLOWS_SHOWN:
            console.print(f"... and {len(flows) - FLOWS_SHOWN:,} more flows (--json lists them)")
    if analysis.nat:
        # A MASQUERADE rewrites every flow's own port: rewrites that read alike are one line.
        alike: dict[str, list[int]] = {}
        for ev, n in analysis.nat.values():
            text = f"{ev.label} between {ev.between[0]} and {ev.between[1]}"
            packets_and_rewrites = alike.setdefault(text, [0, 0])
            packets_and_rewrites[0] += n
            packets_and_rewrites[1] += 1
        console.print()
        console.print("NAT rewrites:", style="bold")
        ranked = sorted(alike.items(), key=lambda item: -item[1][0])
        for text, (n, rewrites) in ranked[:FLOWS_SHOWN]:
            flows_text = f" in {rewrites:,} flows" if rewrites > 1 else ""
            console.print(f"  {text} ({n:,} packets{flows_text})", style="yellow")
        if len(ranked) > FLOWS_SHOWN:
            console.print(f"  ... and {len(ranked) - FLOWS_SHOWN:,} more (--json lists them)")
    if analysis.hops:
        rank = {p.id: i for i, p in enumerate(trace.points)}
        kinds: dict[str, int] = {}  # in the order they first came
        for _, kind, _, _ in analysis.hops:
            kinds.setdefault(kind, len(kinds))

        def path_order(item: tuple[tuple[str, str, str, str], Any]) -> tuple[int, int, int]:
            (direction, kind, a, _), _ = item
            step = rank.get(a, len(rank))
            if direction == "request":
                return (0, kinds[kind], step)
            return (1, kinds[kind], -step)

        # One line naming the direction and packet kind, then its hops: a kind column
        # would push the table past 80 columns with lab point names.
        rows = []
        group = None
        across = bool(errors)
        for (direction, kind, a, b), stats in sorted(analysis.hops.items(), key=path_order):
            if (direction, kind) != group:
                group = (direction, kind)
                rows.append((f"{direction}, {kind}", "", "", "", "", "", *([""] if across else [])))
            s = stats.summary()
            bound = hop_error(points, errors, a, b)
            rows.append(
                (
                    f"  {a} -> {b}",
                    f"{s['count']:,}",
                    _us(s["min_ns"]),
                    _us(s["median_ns"]),
                    _us(s["p99_ns"]),
                    _us(s["max_ns"]),
                    *([f"±{_us(bound)}" if bound else ""] if across else []),
                )
            )
        header = ("hop", "n", "min µs", "median µs", "p99 µs", "max µs")
        _print_aligned(
            console,
            "per-hop latency",
            (*header, *(["clocks µs"] if across else [])),
            rows,
            frozenset((1, 2, 3, 4, 5, 6)),
        )
    for s in trace.stats:
        if s.drops:
            console.print(
                f"warning: {s.point}: the kernel dropped {s.drops:,} packets during the capture",
                style="red",
            )
