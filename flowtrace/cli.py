"""The command line: parse, call the library, render, map errors to exit codes.

Nothing here does networking; every command converts its arguments into plain
values, calls flowtrace.api (or flowtrace.lab), and hands the result to a renderer.
Imports of heavy modules stay inside the commands so `flowtrace --help` is instant.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from flowtrace._version import __version__
from flowtrace.errors import ExitStatus, FlowtraceError

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, status: int) -> None:
    click.echo(f"flowtrace: {message}", err=True)
    sys.exit(status)


def handle_errors(func: F) -> F:
    """Turn user-caused errors into one line on stderr and a distinct exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        show_traceback = bool(ctx.find_root().params.get("traceback"))
        try:
            return func(*args, **kwargs)
        except FlowtraceError as exc:
            if show_traceback:
                raise
            _fail(exc.message, int(exc.status))
        except KeyboardInterrupt:
            _fail("interrupted", int(ExitStatus.INTERRUPTED))
        except PermissionError as exc:
            if show_traceback:
                raise
            _fail(
                f"permission denied ({exc.strerror or exc}): run flowtrace as root",
                int(ExitStatus.NOT_ROOT),
            )
        except BrokenPipeError:
            sys.stderr.close()
            sys.exit(int(ExitStatus.OK))

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flowtrace")
@click.option("--traceback", is_flag=True, hidden=True, help="Show Python tracebacks (developers).")
def cli(traceback: bool) -> None:
    """Trace packets hop by hop through container networking, through NAT.

    \b
    Endpoints: a container name or id, `host`, `netns:NAME`, `pid:N`, or an IP address.
    """


# --- lab -------------------------------------------------------------------------------


@cli.group("lab")
def lab_group() -> None:
    """The Docker lab to trace through: c1..c4, web, ftlab and ft-outside.

    \b
    c1, c2, web are on docker0; c3, c4 on the user-defined network ftlab.

    \b
    web publishes TCP 8080 -> 80; ft-outside (203.0.113.2) reaches it at
    203.0.113.1:8080 through Docker's DNAT, and containers reach ft-outside
    through Docker's MASQUERADE, with no packet leaving the machine.
    """


def _scenario_option(action: str) -> Callable[[F], F]:
    from flowtrace.lab.catalog import SCENARIO_NAMES

    return click.option(
        "--scenario",
        type=click.Choice(SCENARIO_NAMES),
        help=f"{action} one situation's containers (README: Situations).",
    )


def _show_scenario(state: Any) -> None:
    from flowtrace import lab
    from flowtrace.lab import scenarios

    click.echo(lab.render_state(state.lab))
    click.echo()
    click.echo(scenarios.render(state))
    click.echo()
    click.echo(scenarios.render_summary(state))


@lab_group.command("up")
@_scenario_option("Also build")
@handle_errors
def lab_up(scenario: str | None) -> None:
    """Make whatever of the lab is missing (safe to run again)."""
    from flowtrace import lab

    if scenario:
        from flowtrace.lab import scenarios

        built = scenarios.up(scenario)
        click.echo(lab.render_changes(built.changes))
        click.echo()
        _show_scenario(built)
        return
    state = lab.up()
    click.echo(lab.render_changes(state.changes))
    click.echo()
    click.echo(lab.render_state(state))
    click.echo()
    click.echo(lab.render_summary(state))


@lab_group.command("status")
@_scenario_option("Also show")
@handle_errors
def lab_status(scenario: str | None) -> None:
    """Show the lab; exit status 5 when part of it is missing or stopped."""
    from flowtrace import lab

    if scenario:
        from flowtrace.lab import scenarios

        shown = scenarios.status(scenario)
        _show_scenario(shown)
        if not shown.complete:
            sys.exit(int(ExitStatus.NOT_FOUND))
        return
    state = lab.status()
    click.echo(lab.render_state(state))
    click.echo()
    click.echo(lab.render_summary(state))
    if not state.complete:
        sys.exit(int(ExitStatus.NOT_FOUND))


@lab_group.command("down")
@_scenario_option("Only remove")
@handle_errors
def lab_down(scenario: str | None) -> None:
    """Remove everything the lab made, and nothing else."""
    from flowtrace import lab

    if scenario:
        from flowtrace.lab import scenarios

        click.echo(scenarios.render_removed(scenario, scenarios.down(scenario)))
        return
    try:
        removed = lab.down()
    except lab.LabPartlyRemovedError as exc:
        if exc.removed:
            click.echo(lab.render_removed(exc.removed))
        raise
    click.echo(lab.render_removed(removed))


# --- path / ping / tcp / udp ------------------------------------------------------------


@cli.command("path")
@click.argument("src")
@click.argument("dst")
@click.option("--json", "as_json", is_flag=True, help="Print the points as JSON.")
@handle_errors
def path_cmd(src: str, dst: str, as_json: bool) -> None:
    """Print the observation points a packet from SRC to DST crosses, sending nothing.

    DST may carry a port (c2:80, 203.0.113.1:8080) to follow a published port's DNAT.
    """
    from flowtrace import api

    kind = "tcp" if ":" in dst.removeprefix("netns:").removeprefix("pid:") else "icmp"
    points, notes = api.path(src, dst, kind)  # type: ignore[arg-type]
    if as_json:
        import json

        from flowtrace.output.jsonout import point_dict

        click.echo(
            json.dumps({"points": [point_dict(p) for p in points], "notes": notes}, indent=2)
        )
        return
    from rich.console import Console

    from flowtrace.output.terminal import render_path

    render_path(points, notes, Console(highlight=False, soft_wrap=True))


def _trace_options(func: F) -> F:
    options = [
        click.option(
            "-c",
            "--count",
            default=1,
            show_default=True,
            type=click.IntRange(1, 100000),
            help="Probes to send.",
        ),
        click.option(
            "-i",
            "--interval",
            default=1.0,
            show_default=True,
            type=click.FloatRange(0.0),
            help="Seconds between probes.",
        ),
        click.option(
            "--timeout",
            default=2.0,
            show_default=True,
            type=click.FloatRange(0.01),
            help="Seconds to wait for each probe's answer.",
        ),
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            help="Print one JSON document (see README) instead of tables.",
        ),
        click.option(
            "-o",
            "--output",
            type=click.Path(file_okay=False),
            help="Folder for the pcap set [default: captures/<time>-<src>-<dst>/].",
        ),
        click.option("--no-record", is_flag=True, help="Do not write a pcap set."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _run_trace(
    kind: str,
    src: str,
    dst: str,
    count: int,
    interval: float,
    timeout: float,
    as_json: bool,
    output: str | None,
    no_record: bool,
) -> None:
    from pathlib import Path

    from flowtrace import api

    options = api.TraceOptions(
        kind=kind,  # type: ignore[arg-type]
        count=count,
        interval=interval,
        timeout=timeout,
        output_dir=Path(output) if output else None,
        record=not no_record,
        command=" ".join(["flowtrace", *sys.argv[1:]]),
    )
    result = api.run_trace(src, dst, options)
    if as_json:
        from flowtrace.output.jsonout import dumps

        click.echo(dumps(result))
    else:
        from flowtrace.output.terminal import render_trace

        render_trace(result)
    if result.meta.get("interrupted"):
        sys.exit(int(ExitStatus.INTERRUPTED))
    if not all(v.answered for v in result.verdicts):
        sys.exit(int(ExitStatus.NO_REPLY))


@cli.command()
@click.argument("src")
@click.argument("dst")
@_trace_options
@handle_errors
def ping(src: str, dst: str, **opts: Any) -> None:
    """Send ICMP echo from SRC to DST and follow each packet hop by hop.

    Exit status 0 when every probe was answered, 10 when some were not.
    """
    _run_trace("icmp", src, dst, **opts)


@cli.command()
@click.argument("src")
@click.argument("dst", metavar="DST:PORT")
@_trace_options
@handle_errors
def tcp(src: str, dst: str, **opts: Any) -> None:
    """Send a TCP SYN from SRC to DST:PORT; see the SYN-ACK or RST, and any DNAT on the way."""
    _run_trace("tcp", src, dst, **opts)


@cli.command()
@click.argument("src")
@click.argument("dst", metavar="DST:PORT")
@_trace_options
@handle_errors
def udp(src: str, dst: str, **opts: Any) -> None:
    """Send a UDP datagram from SRC to DST:PORT and follow it (and any answer or ICMP error)."""
    _run_trace("udp", src, dst, **opts)


# --- capture / analyze / plot -------------------------------------------------------------


@cli.command("dns")
@click.argument("src")
@click.argument("name")
@click.option(
    "-t", "--type", "qtype", default="A", show_default=True, help="Record type to ask for."
)
@click.option(
    "--server",
    metavar="IP",
    help="Ask this server instead of the first nameserver in SRC's resolv.conf.",
)
@click.option(
    "--timeout",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.01),
    help="Seconds to wait for the answer.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (see README).")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False),
    help="Folder for the pcap set [default: captures/<time>-<src>-dns-<name>/].",
)
@click.option("--no-record", is_flag=True, help="Do not write a pcap set.")
@handle_errors
def dns_cmd(
    src: str,
    name: str,
    qtype: str,
    server: str | None,
    timeout: float,
    as_json: bool,
    output: str | None,
    no_record: bool,
) -> None:
    """Look NAME up from SRC as its resolver would, and follow the query and the answer.

    The server is the first nameserver of SRC's /etc/resolv.conf (on a user-defined
    Docker network: 127.0.0.11, Docker's embedded DNS, reached through a DNAT rule in
    the container's own namespace); a name in SRC's /etc/hosts is answered from there.
    Exit status 0 when an answer came, 10 when none did.
    """
    from flowtrace.dns import lookup, lookup_dict, render

    result = lookup(
        src,
        name,
        qtype,
        server,
        timeout,
        output,
        record=not no_record,
        command=" ".join(["flowtrace", *sys.argv[1:]]),
    )
    if as_json:
        import json

        click.echo(json.dumps(lookup_dict(result), indent=2))
    else:
        from rich.console import Console

        render(result, Console(highlight=False, soft_wrap=True))
    if result.meta.get("interrupted"):
        sys.exit(int(ExitStatus.INTERRUPTED))
    if not result.answered:
        sys.exit(int(ExitStatus.NO_REPLY))


class OneLineUsageCommand(click.Command):
    """A command whose usage mistakes are one line (`flowtrace: ...`, exit 2) like its errors."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            _fail(f"{exc.format_message()} (see flowtrace {self.name} --help)", exc.exit_code)
            raise  # not reached: _fail exits


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


@cli.command("capture", cls=OneLineUsageCommand)
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
@handle_errors
def capture_cmd(
    src: str | None,
    dst: str | None,
    points: tuple[str, ...],
    filter_expr: str | None,
    duration: float | None,
    count: int | None,
    output: str | None,
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

    from flowtrace.capturing import capture

    out = Console(highlight=False, soft_wrap=True)
    err = Console(highlight=False, soft_wrap=True, stderr=True)
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
            command=" ".join(["flowtrace", *sys.argv[1:]]),
            on_ready=on_ready,
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
    if result.interrupted:
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
    if result.interrupted:
        sys.exit(int(ExitStatus.INTERRUPTED))


SHOWN_PACKETS = 10  # packets listed hop by hop by default; the rest are summarised
JSON_BATCH = 64  # packets `analyze --json` writes to stdout at a time


@cli.command("analyze", cls=OneLineUsageCommand)
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
        import json

        from flowtrace.analyze import packet_json

        out = sys.stdout
        out.write('{"packets": [')
        # Packets are written JSON_BATCH at a time: one write per packet cost a tenth of
        # the pass.  pending[0] is the separator the next batch starts with.
        pending = ["\n"]

        def on_packet(pkt: Any) -> None:
            pending.append(packet_json(pkt))
            if len(pending) > JSON_BATCH:
                out.write(pending[0] + ",\n".join(pending[1:]))
                pending[:] = [",\n"]

        analysis = analyze(
            target,
            keep_packets=False,
            on_packet=on_packet if show_packets is not False else None,
            point_names=names,
        )
        if len(pending) > 1:
            out.write(pending[0] + ",\n".join(pending[1:]))
        summary = summary_dict(analysis)
        summary["packet_count"] = summary.pop("packets")
        out.write("],\n")
        out.write(json.dumps(summary, indent=1)[1:].lstrip())
        out.write("\n")
        return
    from rich.console import Console

    from flowtrace.output.terminal import render_analysis

    shown: list[Any] = []
    limit = None if show_packets else (0 if show_packets is False else SHOWN_PACKETS)

    def keep(pkt: Any) -> None:
        if limit is None or len(shown) < limit:
            shown.append(pkt)

    analysis = analyze(target, keep_packets=False, on_packet=keep, point_names=names)
    render_analysis(analysis, shown, Console(highlight=False, soft_wrap=True))


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


def main() -> None:
    """Run the CLI, then leave without Python's interpreter teardown.

    Everything flowtrace writes is closed and flushed by the commands themselves;
    the teardown only joins pyroute2's and asyncio's idle machinery, which costs
    0.25-0.4 s per run (measured with benchmarks/ping_bench.py).
    """
    code: int | str | None = 0
    try:
        cli(prog_name="flowtrace")
    except SystemExit as exc:
        code = exc.code
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
    if isinstance(code, str):
        os.write(2, (code + "\n").encode())
        code = 1
    os._exit(code or 0)


if __name__ == "__main__":
    main()
