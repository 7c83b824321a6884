"""Who may change the lab, and one change at a time: root's capabilities and a file lock.

Every verb that changes the lab (base or scenario) checks the capabilities first and
holds the lock while it changes anything, so two `lab up` at once do not race.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from flowtrace.errors import FlowtraceError, NotRootError

LOCK_PATH = "/run/lock/flowtrace-lab.lock"
LOCK_TIMEOUT_S = 120.0

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


def _effective_capabilities() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def require_privileges() -> None:
    """The lab creates namespaces and links and enters containers' namespaces."""
    caps = _effective_capabilities()
    if not (caps >> CAP_SYS_ADMIN) & 1 or not (caps >> CAP_NET_ADMIN) & 1:
        raise NotRootError(
            "flowtrace lab needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN): run it as root"
        )


@contextmanager
def exclusive(timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """One `lab up` or `lab down` at a time on this machine."""
    os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
    with open(LOCK_PATH, "a") as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise FlowtraceError(
                        f"another flowtrace lab command holds {LOCK_PATH} for over "
                        f"{timeout_s:.0f} s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
