"""`flowtrace path`, `ping`, `tcp`, `udp`, `dns`: what a packet between two endpoints meets."""

from __future__ import annotations

from typing import Any

import click

from flowtrace.cli.base import F, cli, command_line, engine_options, finish, handle_errors


def _host_option(func: F) -> F:
    return click.option(
        "--host",
        "hosts",
        multiple=True,
        metavar="ALIAS=URL",
        help="Another Docker host, for endpoints NAME@ALIAS: unix:///PATH (or a socket's "
        "path), tcp://HOST:PORT, ssh://USER@HOST.  A Docker context's name needs none.",
    )(func)


def _family_options(func: F) -> F:
    """-4 / -6, as ping and curl spell them."""
    func = click.option(
        "-6", "ipv6", is_flag=True, help="IPv6 only (the destination's IPv6 address)."
    )(func)
    return click.option(
        "-4", "ipv4", is_flag=True, help="IPv4 only (the destination's IPv4 address)."
    )(func)


def _family(ipv4: bool, ipv6: bool) -> int | None:
    if ipv4 and ipv6:
        raise click.UsageError("-4 and -6 exclude each other: give one of them")
    return 4 if ipv4 else 6 if ipv6 else None


@cli.command("path")
@click.argument("src")
@click.argument("dst")
@_family_options
@click.option("--json", "as_json", is_flag=True, help="Print the points as JSON.")
@engine_options
@_host_option
@handle_errors
def path_cmd(
    src: str,
    dst: str,
    ipv4: bool,
    ipv6: bool,
    as_json: bool,
    engine: str | None,
    context: str | None,
    hosts: tuple[str, ...],
) -> None:
    """Print the observation points a packet from SRC to DST crosses, sending nothing.

    DST may carry a port (c2:80, 203.0.113.1:8080, [fd00::3]:80) to follow a published
    port's DNAT.
    """
    from flowtrace import api
    from flowtrace.topology.route import probe_kind_of

    points, notes = api.path(
        src,
        dst,
        probe_kind_of(dst),
        _family(ipv4, ipv6),
        engine=engine,
        context=context,
        hosts=hosts,
    )
    if as_json:
        import json

        from flowtrace.output.jsonout import point_dict

        click.echo(
            json.dumps({"points": [point_dict(p) for p in points], "notes": notes}, indent=2)
        )
        return
    from rich.console import Console

    from flowtrace.output.terminal import render_path

    render_path(points, notes, Console(highlight=False, soft_wrap=True, emoji=False, markup=False))


_RULES_OPTION = click.option(
    "--rules",
    type=click.Choice(["model", "kernel"]),
    default="model",
    show_default=True,
    help="Where the rules shown come from: flowtrace's reading of the firewall (model), or "
    "also the kernel's own nftables trace of the probe in every namespace on the path "
    "(kernel: adds a tracing table of flowtrace's own for the probe's duration, and reads "
    "the kernel's drop reasons).",
)


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
        _RULES_OPTION,
    ]
    for option in reversed(options):
        func = option(func)
    return engine_options(_family_options(_host_option(func)))


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
    ipv4: bool,
    ipv6: bool,
    rules: str,
    engine: str | None,
    context: str | None,
    hosts: tuple[str, ...],
) -> None:
    from pathlib import Path

    from flowtrace import api
    from flowtrace.endpoints.engines import EngineChoice

    options = api.TraceOptions(
        kind=kind,  # type: ignore[arg-type]
        count=count,
        interval=interval,
        timeout=timeout,
        output_dir=Path(output) if output else None,
        record=not no_record,
        command=command_line(),
        family=_family(ipv4, ipv6),
        rules=rules,
    )
    result = api.run_trace(src, dst, options, engine=EngineChoice(engine, context), hosts=hosts)
    if as_json:
        from flowtrace.output.jsonout import dumps

        click.echo(dumps(result))
    else:
        from flowtrace.output.terminal import render_trace

        render_trace(result)
    finish(result)


@cli.command()
@click.argument("src")
@click.argument("dst")
@_trace_options
@handle_errors
def ping(src: str, dst: str, **opts: Any) -> None:
    """Send ICMP echo from SRC to DST and follow each packet hop by hop.

    Over IPv6 (-6, an IPv6 DST, or a DST whose best address is IPv6) it is ICMPv6 echo.
    Exit status 0 when every probe was answered, 10 when some were not.
    """
    _run_trace("icmp", src, dst, **opts)


@cli.command()
@click.argument("src")
@click.argument("dst", metavar="DST:PORT")
@_trace_options
@handle_errors
def tcp(src: str, dst: str, **opts: Any) -> None:
    """Send a TCP SYN from SRC to DST:PORT; see the SYN-ACK or RST, and any DNAT on the way.

    An IPv6 address takes its port in brackets: [fd00::3]:80.
    """
    _run_trace("tcp", src, dst, **opts)


@cli.command()
@click.argument("src")
@click.argument("dst", metavar="DST:PORT")
@_trace_options
@handle_errors
def udp(src: str, dst: str, **opts: Any) -> None:
    """Send a UDP datagram from SRC to DST:PORT and follow it (and any answer or ICMP error)."""
    _run_trace("udp", src, dst, **opts)


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
@_RULES_OPTION
@engine_options
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
    rules: str,
    engine: str | None,
    context: str | None,
) -> None:
    """Look NAME up from SRC as its resolver would, and follow the query and the answer.

    The server is the first nameserver of SRC's /etc/resolv.conf (on a user-defined
    Docker network: 127.0.0.11, Docker's embedded DNS, reached through a DNAT rule in
    the container's own namespace; on a Podman network: its gateway, where aardvark-dns
    answers); a name in SRC's /etc/hosts is answered from there.
    Exit status 0 when an answer came, 10 when none did.
    """
    from flowtrace import api

    result = api.dns_lookup(
        src,
        name,
        qtype,
        server,
        timeout,
        output,
        record=not no_record,
        command=command_line(),
        rules=rules,
        engine=engine,
        context=context,
    )
    if as_json:
        import json

        from flowtrace.output.jsonout import lookup_dict

        click.echo(json.dumps(lookup_dict(result), indent=2))
    else:
        from rich.console import Console

        from flowtrace.output.dnsview import render

        render(result, Console(highlight=False, soft_wrap=True, emoji=False, markup=False))
    finish(result)
