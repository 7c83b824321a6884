"""`flowtrace lab replica`: an engine's datapath rebuilt in namespaces of flowtrace's own."""

from __future__ import annotations

import click

from flowtrace.cli.base import handle_errors
from flowtrace.cli.lab import lab_group


class EngineChoice(click.Choice):
    """The replicas' engine names, read only when a command needs them (loading the CLI
    must not import the lab)."""

    def __init__(self) -> None:  # click.Choice's own __init__ would need the names now
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        from flowtrace.lab.replica import ENGINES

        return tuple(ENGINES)


@lab_group.group("replica")
def replica_group() -> None:
    """Docker 20.10, 28, 29 (iptables or nftables) or Podman netavark's datapath, rebuilt in
    namespaces of flowtrace's own (ftfw-h, ftfw-c1..ftfw-c8, ftfw-out) with exactly the rules
    that engine writes: no engine needed, nothing else on the host changes."""


@replica_group.command("up")
@click.argument("engine", type=EngineChoice())
@click.option("--variant", type=click.Choice(["noproxy"]), help="dockerd --userland-proxy=false.")
@handle_errors
def replica_up(engine: str, variant: str | None) -> None:
    """Build the replica of ENGINE (an earlier replica is removed first)."""
    from flowtrace.lab import replica

    with replica.locked():
        built = replica.build(engine, variant)
    click.echo("\n".join(replica.describe(built)))


@replica_group.command("down")
@handle_errors
def replica_down() -> None:
    """Remove the replica's namespaces (and with them its links and rules)."""
    from flowtrace.lab import replica

    with replica.locked():
        removed = replica.remove()
    click.echo("\n".join(removed) or "no replica to remove")
