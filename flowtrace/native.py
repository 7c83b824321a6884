"""flowtrace's optional C modules: each is built at install when a compiler is there.

Every C module speeds up a path that also exists in pure Python and gives the same
results (tests compare the two).  FLOWTRACE_NATIVE=0 chooses the Python paths on
purpose: the tests and benchmarks use it to measure both.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

#: The C modules setup.py builds (all optional), by their import names.
MODULES = (
    "flowtrace.capture._ringpcap",
    "flowtrace.pcap._pcapscan",
    "flowtrace.correlate._grouper",
    "flowtrace.correlate._framedecode",
)


def enabled() -> bool:
    """False when FLOWTRACE_NATIVE=0 asks for the pure-Python paths."""
    return os.environ.get("FLOWTRACE_NATIVE", "1") != "0"


def load(name: str) -> ModuleType | None:
    """The built C module `name` (one of MODULES), or None: not built, or turned off."""
    if not enabled():
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
