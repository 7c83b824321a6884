"""`flowtrace lab`: the Docker lab and its situations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from flowtrace.cli.base import F, cli, engine_options, finish, handle_errors


@cli.group("lab")
def lab_group() -> None:
    """The lab to trace through: c1..c4, web, ftlab and ft-outside (Docker or Podman).

    \b
    c1, c2, web are on docker0; c3, c4 on the user-defined network ftlab.

    \b
    web publishes TCP 8080 -> 80; ft-outside (203.0.113.2) reaches it at
    203.0.113.1:8080 through Docker's DNAT, and containers reach ft-outside
    through Docker's MASQUERADE, with no packet leaving the machine.

    \b
    With --engine podman: c1, c2, web on Podman's default network (podman0), c3,
    c4 on ftlab, web publishing 8081 -> 80, and the pod ftpod (pa, pb).
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

    if not state.scenario.own_engine:  # else there is no base lab on its engine
        click.echo(lab.render_state(state.lab))
        click.echo()
    click.echo(scenarios.render(state))
    click.echo()
    click.echo(scenarios.render_summary(state))


def _docker_engine(engine: str | None, context: str | None) -> Any:
    """The engine selection the Docker lab's verbs run under."""
    from flowtrace.endpoints.engines import EngineChoice, using

    return using(EngineChoice(engine, context))


def _podman_lab(scenario: str | None, engine: str | None, context: str | None) -> Any:
    """The Podman lab's module when the command means it, else None (the Docker lab)."""
    from flowtrace.lab.choose import lab_engine

    if lab_engine(engine, context) != "podman":
        return None
    if scenario:
        from flowtrace.errors import ExitStatus, FlowtraceError

        raise FlowtraceError(
            "the scenarios are built on Docker; the Podman lab is its base situations and the "
            "pod ftpod (lab up --engine podman)",
            ExitStatus.USAGE,
        )
    from flowtrace.lab import podman

    return podman


@lab_group.command("up")
@_scenario_option("Also build")
@engine_options
@handle_errors
def lab_up(scenario: str | None, engine: str | None, context: str | None) -> None:
    """Make whatever of the lab is missing (safe to run again)."""
    from flowtrace import lab

    on_podman = _podman_lab(scenario, engine, context)
    if on_podman is not None:
        state = on_podman.up()
        click.echo(lab.render_changes(state.changes))
        click.echo()
        click.echo(lab.render_state(state))
        click.echo()
        click.echo(on_podman.render_summary(state))
        return
    with _docker_engine(engine, context):
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
@engine_options
@handle_errors
def lab_status(scenario: str | None, engine: str | None, context: str | None) -> None:
    """Show the lab; exit status 5 when part of it is missing or stopped."""
    from flowtrace import lab

    on_podman = _podman_lab(scenario, engine, context)
    if on_podman is not None:
        state = on_podman.status()
        click.echo(lab.render_state(state))
        click.echo()
        click.echo(on_podman.render_summary(state))
        finish(state)
        return
    with _docker_engine(engine, context):
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
@engine_options
@handle_errors
def lab_down(scenario: str | None, engine: str | None, context: str | None) -> None:
    """Remove everything the lab made, and nothing else."""
    from flowtrace import lab

    on_podman = _podman_lab(scenario, engine, context)
    if on_podman is not None:
        try:
            removed = on_podman.down()
        except lab.LabPartlyRemovedError as exc:
            if exc.removed:
                click.echo(lab.render_removed(exc.removed))
            raise
        click.echo(lab.render_removed(removed))
        return
    with _docker_engine(engine, context):
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


@lab_group.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@handle_errors
def lab_exec(command: tuple[str, ...]) -> None:
    """Run COMMAND on the IPv6 lab's host: namespace ft6-host, its own Docker engine.

    \b
    Scenario ipv6 runs on a dockerd of the lab's own (IPv6 NAT on) in a namespace of
    its own, so the machine's engine is never reconfigured; trace it from there:
      flowtrace lab exec -- flowtrace ping -6 v6a v6b
      flowtrace lab exec -- docker ps
      flowtrace lab exec -- ip6tables-save -t nat
    DOCKER_HOST points at its engine; `flowtrace` is this flowtrace.
    """
    import sys

    from flowtrace.lab import own_engine
    from flowtrace.lab.guard import require_privileges

    require_privileges()
    sys.exit(own_engine.run(command))
