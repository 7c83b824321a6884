"""Podman's Docker-compatible API, started by flowtrace when nothing serves it.

Rootful Podman has no daemon: its API exists while `podman system service` runs
(systemd's podman.socket starts it on demand where systemd runs).  flowtrace starts one
on a socket of its own under /run/flowtrace, asks it, and stops it when the command
ends; the kernel also stops it should flowtrace die first (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

#: How long `podman system service` may take to answer (it answers in about 50 ms here).
START_WAIT_S = 15.0
STOP_WAIT_S = 5.0
PR_SET_PDEATHSIG = 1
#: What makes the podman CLI a client of a (possibly remote) service instead of the engine.
REMOTE_VARIABLES = ("CONTAINER_HOST", "CONTAINER_CONNECTION", "CONTAINER_SSHKEY")


class PodmanServiceError(Exception):
    """Podman's API could not be started (the reason is the message)."""


def answers(path: str, timeout: float = 2.0) -> bool:
    """The socket at `path` answers GET /_ping with OK (Docker's and Podman's APIs do)."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
            reply = sock.recv(4096)
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and reply.rstrip().endswith(b"OK")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class PodmanService:
    """One `podman system service` flowtrace started."""

    process: subprocess.Popen[bytes]
    path: str

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def stop(self) -> None:
        """SIGTERM (Podman removes its socket), then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if os.path.exists(self.path):
            os.unlink(self.path)


def start_service(path: str | None = None, log: str | None = None) -> PodmanService:
    """Start Podman's API on `path` (default: one socket per flowtrace process) and wait
    until it answers."""
    podman = shutil.which("podman")
    if podman is None:
        raise PodmanServiceError("podman is not installed")
    if os.geteuid() != 0:
        raise PodmanServiceError("flowtrace starts rootful Podman's API only as root")
    path = path or f"/run/flowtrace/podman-{os.getpid()}.sock"
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if os.path.exists(path):
        if answers(path):
            raise PodmanServiceError(f"something already answers on {path}")
        os.unlink(path)
    # Only the main thread lives as long as the process: a death signal tied to another
    # thread would stop the service when that thread ends.
    tie = _die_with_parent if threading.current_thread() is threading.main_thread() else None
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    # podman itself reads these and would become a client of another engine
    env = {k: v for k, v in os.environ.items() if k not in REMOTE_VARIABLES}
    try:
        process = subprocess.Popen(
            [podman, "system", "service", "--time=0", f"unix://{path}"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            preexec_fn=tie,
            start_new_session=tie is None,
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    service = PodmanService(process, path)
    deadline = time.monotonic() + START_WAIT_S
    while not answers(path, timeout=0.5):
        if process.poll() is not None:
            raise PodmanServiceError(
                f"`podman system service` exited with status {process.returncode}"
            )
        if time.monotonic() > deadline:
            service.stop()
            raise PodmanServiceError(f"`podman system service` did not answer on {path}")
        time.sleep(0.02)
    return service
