"""`flowtrace lab`: the Docker lab and its situations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from flowtrace.cli.base import F, cli, finish, handle_errors


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


class ScenarioChoice(click.Choice):
    """The scenario names, read from the lab's catalog only when a command needs them, so
    that loading the CLI (every flowtrace command) does not import the lab."""

    def __init__(self) -> None:  # click.Choice's own __init__ would need the names now
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        from flowtrace.lab.catalog import SCENARIO_NAMES

        return tuple(SCENARIO_NAMES)


def _scenario_option(action: str) -> Callable[[F], F]:
    return click.option(
        "--scenario",
        type=ScenarioChoice(),
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
        finish(shown)
        return
    state = lab.status()
    click.echo(lab.render_state(state))
    click.echo()
    click.echo(lab.render_summary(state))
    finish(state)


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
