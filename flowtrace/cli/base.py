"""The command line's ground floor: the group, error handling, exit statuses.

Nothing in cli/ does networking: every command converts its arguments into plain
values, calls flowtrace.api (or flowtrace.lab), hands the result to a renderer, and
ends with the exit status flowtrace.errors decides.  Imports of heavy modules stay
inside the commands so `flowtrace --help` is instant.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click

from flowtrace._version import __version__
from flowtrace.errors import ExitStatus, error_status, exit_status_for

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, status: int) -> NoReturn:
    click.echo(f"flowtrace: {message}", err=True)
    sys.exit(status)


def finish(result: object) -> None:
    """End a command that ran: its exit status as flowtrace.errors decides it."""
    status = exit_status_for(result)
    write_error = getattr(result, "write_error", None)
    if status == ExitStatus.WRITE_FAILED and write_error:
        fail(str(write_error), int(status))
    if status != ExitStatus.OK:
        sys.exit(int(status))


def command_line() -> str:
    """The command as typed, for manifests."""
    return " ".join(["flowtrace", *sys.argv[1:]])


def engine_options(func: F) -> F:
    """--engine and --context, on every command that names containers."""
    func = click.option(
        "--context",
        metavar="NAME",
        help="Docker context to use (as `docker --context`); default: DOCKER_HOST, "
        "DOCKER_CONTEXT, then the current context, as the docker CLI reads them.",
    )(func)
    return click.option(
        "--engine",
        type=click.Choice(["docker", "podman"]),
        help="The container engine whose containers are named [default: Docker as the "
        "docker CLI finds it, else Podman].",
    )(func)


def handle_errors(func: F) -> F:
    """Turn user-caused errors into one line on stderr and a distinct exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        show_traceback = bool(ctx.find_root().params.get("traceback"))
        try:
            return func(*args, **kwargs)
        except BrokenPipeError:
            sys.stderr.close()
            sys.exit(int(ExitStatus.OK))
        except (Exception, KeyboardInterrupt) as exc:
            known = error_status(exc)
            if known is None or (show_traceback and not isinstance(exc, KeyboardInterrupt)):
                raise
            fail(known[1], int(known[0]))

    return wrapper  # type: ignore[return-value]


class OneLineUsageCommand(click.Command):
    """A command whose usage mistakes are one line (`flowtrace: ...`, exit 2) like its errors."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            fail(f"{exc.format_message()} (see {ctx.command_path} --help)", exc.exit_code)


class OneLineUsageGroup(click.Group):
    """A group whose commands and subgroups, and the group itself, say usage mistakes in one
    line (an unknown command, a bad option value), exit status 2."""

    command_class = OneLineUsageCommand
    group_class = type  # subgroups are of this class too

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            fail(f"{exc.format_message()} (see {ctx.command_path} --help)", exc.exit_code)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            fail(f"{exc.format_message()} (see {ctx.command_path} --help)", exc.exit_code)


@click.group(
    cls=OneLineUsageGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="flowtrace")
@click.option("--traceback", is_flag=True, hidden=True, help="Show Python tracebacks (developers).")
def cli(traceback: bool) -> None:
    """Trace packets hop by hop through container networking, through NAT.

    \b
    Endpoints: a container name or id, `host`, `netns:NAME`, `pid:N`, or an IP address;
    on another Docker host NAME@HOST (HOST: a Docker context, or --host ALIAS=URL).
    """
