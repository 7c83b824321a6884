"""The command line: parse, call the library, render, map errors to exit codes.

Nothing here does networking; every command converts its arguments into plain
values, calls flowtrace.api (or flowtrace.lab), and hands the result to a renderer.
Imports of heavy modules stay inside the commands so `flowtrace --help` is instant.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from flowtrace import __version__
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


# --- path / ping / tcp / udp ------------------------------------------------------------


# --- capture / analyze / plot -------------------------------------------------------------


def main() -> None:
    cli(prog_name="flowtrace")


if __name__ == "__main__":
    main()
