"""The bulk capture's C writer, `_ringpcap` (built at install), or None: the Python path.

setup.py builds flowtrace/capture/_ringpcap.c when a C compiler and the Python headers
are there (scripts/setup.sh installs both); without them the install still succeeds
and a bulk capture says once, on stderr, that it runs the pure-Python reader instead.
FLOWTRACE_NATIVE=0 chooses the Python path on purpose (tests compare the two, the
capture benchmark measures both).
"""

from __future__ import annotations

import sys
from types import ModuleType

from flowtrace import native

_said = False


def ringpcap() -> ModuleType | None:
    """The C module, or None when it is not built or FLOWTRACE_NATIVE=0 turns it off."""
    return native.load("flowtrace.capture._ringpcap")


def why_not() -> str | None:
    """Why the Python path is used, in words, or None when the C writer is in use."""
    if ringpcap() is not None:
        return None
    if not native.enabled():
        return "FLOWTRACE_NATIVE=0 chose the pure-Python capture path"
    return (
        "the C capture writer (flowtrace/capture/_ringpcap.c) is not built, so captures "
        "run the pure-Python path at several times the CPU per frame: install a C compiler "
        "and the Python headers (gcc, python3-dev) and rerun scripts/setup.sh"
    )


def say_once_if_python() -> None:
    """Say once per process, on stderr, that a bulk capture runs the Python path (and why)."""
    global _said
    reason = why_not()
    if reason is None or _said:
        return
    _said = True
    try:
        sys.stderr.write(f"flowtrace: note: {reason}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
