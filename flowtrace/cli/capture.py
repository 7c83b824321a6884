"""`flowtrace capture`, `analyze`, `plot`: record everything on a path, read it back."""

from __future__ import annotations

import sys
from typing import Any

import click

from flowtrace.cli.base import cli, command_line, engine_options, finish, handle_errors


def _capture_table(
    stats: list[Any], elapsed: float, rates: list[float] | None = None, title: str | None = None
) -> Any:
    """Per point: packets, rate (now while live, average at the end), MB, kernel drops."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False, title=title, title_justify="left")
    rate_name = "pps now" if rates is not None else "avg pps"
    for name in ("point", "packets", rate_name, "MB", "kernel drops"):
        table.add_column(name, justify="left" if name == "point" else "right", no_wrap=True)
    for i, s in enumerate(stats):
        rate = rates[i] if rates is not None else (s.packets / elapsed if elapsed > 0 else 0.0)
        table.add_row(
            s.point,
            f"{s.packets:,}",
            f"{rate:,.0f}",
            f"{s.bytes / 1e6:,.2f}",
            f"{s.drops:,}",
            style="red" if s.drops else None,
        )
    return table


class _LiveCounters:
    """The live view of `flowtrace capture`: one line per point, refreshed twice a second."""

    def __init__(self, console: Any) -> None:
        from rich.live import Live

        self._live = Live(console=console, auto_refresh=False, transient=True)
        self._previous: tuple[float, list[int]] | None = None

    def start(self) -> None:
        self._live.start()

    def stop(self) -> None:
        self._live.stop()

    def update(self, stats: list[Any], elapsed: float) -> None:
        packets = [s.packets for s in stats]
        if self._previous is None:
            rates = [n / elapsed if elapsed > 0 else 0.0 for n in packets]
        else:
            then, before = self._previous
            span = max(elapsed - then, 1e-3)
            rates = [(n - b) / span for n, b in zip(packets, before, strict=True)]
        self._previous = (elapsed, packets)
        title = f"capturing for {elapsed:.1f} s (Ctrl-C stops, the set is kept)"
        self._live.update(_capture_table(stats, elapsed, rates, title), refresh=True)


@cli.command("capture")
@click.argument("src", required=False)
@click.argument("dst", required=False)
@click.option(
    "--point",
    "points",
    multiple=True,
    metavar="ENDPOINT/IFNAME",
    help="Capture on this interface too (repeatable): c1/eth0, host/docker0, ...",
)
@click.option(
    "-f",
    "--filter",
    "filter_expr",
    metavar="EXPR",
    help="tcpdump filter expression, compiled to a kernel BPF filter.",
)
@click.option(
    "-d",
    "--duration",
    type=float,
    metavar="SECONDS",
    help="Stop after this many seconds.",
)
@click.option(
    "-n",
    "--count",
    type=int,
    metavar="N",
    help="Stop after N packets over all points (the earliest N are kept).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False),
    help="Folder for the pcap set, new or empty [default: captures/<time>-<src>-<dst>/].",
)
@engine_options
@handle_errors
def capture_cmd(
    src: str | None,
    dst: str | None,
    points: tuple[str, ...],
    filter_expr: str | None,
    duration: float | None,
    count: int | None,
    output: str | None,
    engine: str | None,
    context: str | None,
) -> None:
    """Record all matching traffic on every point between SRC and DST (or on --point ones).

    Runs until --duration, --count or Ctrl-C (or SIGTERM); the pcap set is valid even when
    interrupted.  Progress goes to stderr, the summary to stdout.

    \b
    Examples:
      flowtrace capture c1 c2 -d 10
      flowtrace capture --point c1/eth0 --point host/docker0 -f icmp -n 100
    """
    import signal

    from rich.console import Console

    from flowtrace.api import capture

    out = Console(highlight=False, soft_wrap=True, emoji=False, markup=False)
    err = Console(highlight=False, soft_wrap=True, emoji=False, markup=False, stderr=True)
    live = _LiveCounters(err) if err.is_terminal else None

    def on_ready(ready: list[Any], folder: Any) -> None:
        what = f" matching '{filter_expr}'" if filter_expr else ""
        names = ", ".join(p.id for p in ready)
        err.print(f"capturing{what} on {len(ready)} points: {names}")
        err.print(f"writing {folder}/ (Ctrl-C stops, the set is kept)")
        if live is not None:
            live.start()

    # A shell starts background jobs with Ctrl-C ignored; `kill -INT` must still stop us.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = capture(
            src,
            dst,
            points,
            filter_expr,
            duration,
            count,
            output,
            live.update if live is not None else None,
            command=command_line(),
            on_ready=on_ready,
            engine=engine,
            context=context,
        )
    finally:
        if live is not None:
            live.stop()
        signal.signal(signal.SIGINT, previous)
    out.print(_capture_table(result.stats, result.duration_s))
    for note in result.notes:
        out.print(f"note: {note}")
    total = sum(s.packets for s in result.stats)
    drops = sum(s.drops for s in result.stats)
    if result.write_error:
        how = "stopped: the set could not be written further"
    elif result.interrupted:
        how = "interrupted"
    elif count is not None and total >= count:
        how = f"stopped after {count:,} packets"
    elif duration is not None:
        how = f"stopped after {duration:g} s"
    else:
        how = "stopped: every point went away"
    out.print(
        f"{total:,} packets on {len(result.points)} points in {result.duration_s:.1f} s "
        f"({how}), {drops:,} dropped by the kernel"
    )
    if result.trimmed:
        out.print(
            f"note: {result.trimmed:,} more packets arrived in the last ring blocks "
            "and were left out"
        )
    if drops:
        out.print(
            "warning: the kernel dropped packets: narrow the --filter or capture on fewer points",
            style="red",
        )
    out.print(f"pcap set: {result.directory}/ ({result.pcapng.name} + manifest.json)")
    out.print(f"next: flowtrace analyze {result.directory}")
    finish(result)


SHOWN_PACKETS = 10  # packets listed hop by hop by default; the rest are summarised
JSON_BATCH = 64  # packets `analyze --json` writes to stdout at a time


@cli.command("analyze")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Stream one JSON document: packets, then points, flows, NAT events, hops (see README).",
)
@click.option(
    "--packets/--no-packets",
    "show_packets",
    default=None,
    help="List every packet hop by hop (default: the first 10; with --json all, "
    "--no-packets leaves them out).",
)
@click.option(
    "--point-names",
    metavar="NAME,NAME,...",
    help="Name the interfaces in file order, e.g. c1/eth0,host/docker0 (for files whose "
    "interfaces have no names, such as tcpdump captures merged with mergecap -I none).",
)
@handle_errors
def analyze_cmd(
    paths: tuple[str, ...], as_json: bool, show_packets: bool | None, point_names: str | None
) -> None:
    """Correlate a recorded set offline: flows, each packet's hops, NAT events, hop latency.

    PATHS: a pcap set folder, a pcapng (several interfaces), or several pcap files (one point
    each, named after the file).  One pass, in constant memory however long the capture.
    """
    from flowtrace.analyze import analyze, parse_point_names, summary_dict

    target = paths[0] if len(paths) == 1 else list(paths)
    names = parse_point_names(point_names) if point_names is not None else None
    if as_json:
        from flowtrace.errors import error_status
        from flowtrace.output.jsonstream import JsonDocument

        document = JsonDocument(sys.stdout, JSON_BATCH)
        try:
            analysis = analyze(
                target,
                keep_packets=False,
                on_packet=document.packet if show_packets is not False else None,
                point_names=names,
            )
        except (Exception, KeyboardInterrupt) as exc:
            known = error_status(exc)
            document.fail(*(known or (1, f"{type(exc).__name__}: {exc}")))
            raise
        document.finish(summary_dict(analysis))
        return
    from rich.console import Console

    from flowtrace.output.terminal import render_analysis

    shown: list[Any] = []
    limit = None if show_packets else (0 if show_packets is False else SHOWN_PACKETS)

    def keep(pkt: Any) -> None:
        if limit is None or len(shown) < limit:
            shown.append(pkt)

    analysis = analyze(target, keep_packets=False, on_packet=keep, point_names=names)
    render_analysis(
        analysis, shown, Console(highlight=False, soft_wrap=True, emoji=False, markup=False)
    )


@cli.command("plot")
@click.argument("path", type=click.Path())
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="The image to write: FILE.png or FILE.svg.",
)
@click.option(
    "--kind",
    type=click.Choice(["timeline", "latency", "both"]),
    default="both",
    show_default=True,
    help="timeline: each packet's walk along the path; latency: per-hop boxes; "
    "both: FILE-timeline.png and FILE-latency.png.",
)
@handle_errors
def plot_cmd(path: str, output: str, kind: str) -> None:
    """Draw a recorded set: the hop timeline and the per-hop latency, as PNG or SVG.

    PATH: a pcap set folder (as trace and capture write them), a pcapng or a pcap file.
    """
    from flowtrace.api import load
    from flowtrace.output.plot import image_format, render

    image_format(output)  # a wrong extension fails before the set is read
    for written in render(load(path), output, kind):  # type: ignore[arg-type]
        click.echo(str(written))
