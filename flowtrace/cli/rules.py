"""`flowtrace rules SRC DST[:PORT]`: the firewalls' way for one packet, sending nothing."""

from __future__ import annotations

import sys

import click

from flowtrace.cli.base import cli, handle_errors
from flowtrace.cli.trace import _family, _family_options
from flowtrace.errors import ExitStatus


@cli.command("rules")
@click.argument("src")
@click.argument("dst")
@click.option(
    "-p",
    "--proto",
    type=click.Choice(["icmp", "tcp", "udp"]),
    help="The packet's protocol [default: tcp with a port, else icmp].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the document as JSON (see README).")
@_family_options
@handle_errors
def rules_cmd(src: str, dst: str, proto: str | None, as_json: bool, ipv4: bool, ipv6: bool) -> None:
    """Show, chain by chain, what every firewall on the path from SRC to DST does with a packet
    of that kind and with its reply: each namespace, each hook, each base chain of every
    table (iptables-nft, iptables-legacy, nftables) in priority order, the rules that match,
    the verdicts and the rewrites.  Nothing is sent.

    Exit status 0 when the request and its reply would pass, 10 when either is dropped.
    """
    from flowtrace import api

    doc = api.rules(src, dst, proto, _family(ipv4, ipv6))  # type: ignore[arg-type]
    if as_json:
        import json

        click.echo(json.dumps(doc, indent=2))
    else:
        from flowtrace.output.rulesview import render_rules

        click.echo("\n".join(render_rules(doc)))
    outcomes = [doc["request"]["outcome"]["outcome"]]
    if doc["reply"] is not None:
        outcomes.append(doc["reply"]["outcome"]["outcome"])
    if "dropped" in outcomes:
        sys.exit(int(ExitStatus.NO_REPLY))
