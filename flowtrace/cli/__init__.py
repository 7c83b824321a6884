"""The command line: parse, call the library, render, map errors to exit codes.

cli.base holds the group and the error handling; each module below adds its commands.
"""

from __future__ import annotations

import os
import sys

from flowtrace.cli import capture, lab, replica, rules, trace  # noqa: F401 - each adds its commands to cli
from flowtrace.cli.base import cli
from flowtrace.endpoints import engines

__all__ = ["cli", "main"]


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
    finally:
        engines.close()  # a Podman API flowtrace started stops with it
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
