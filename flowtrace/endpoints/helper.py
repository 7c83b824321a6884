"""The helper container on another host, and the controller's end of its agent's channel.

flowtrace asks the host's engine (the Docker SDK, over whatever the host's URL is) to
create a short-lived container from its own image (endpoints.agent_image) with the
host's pid and network namespaces and the capabilities a capture needs, attaches to it
before it starts (so nothing it writes is missed), starts it, sends the agent's code
down its stdin (endpoints.agent_code) and then talks to the agent over that one attach
stream (endpoints.channel): calls of flowtrace's functions in the host's namespaces,
clock exchanges, a capture's start and stop and its frames.

The helper goes away on every way out: `close()` (every command's `finally`) removes it;
if the controller dies instead, the engine closes the helper's stdin with the attach
stream (StdinOnce), the agent ends, and the engine removes the stopped container
(AutoRemove).  Not `--privileged`: an engine whose own capability bounding set is partial
(a sandbox like the one flowtrace is tested in) cannot start one; the helper asks for
exactly what it uses instead (entering namespaces, packet sockets, netlink, reading other
processes' /proc entries) with seccomp and AppArmor unconfined, as --privileged would.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowtrace.endpoints.agent_code import BOOTSTRAP, code_line
from flowtrace.endpoints.agent_image import AGENT_LABEL, AGENT_PYTHON, ensure_agent_image
from flowtrace.endpoints.channel import (
    CLOCK,
    CLOCK_ANSWER,
    EVENT,
    FRAMES,
    REPLY,
    ChannelError,
    FrameTuple,
    RecordReader,
    request_line,
    safe_loads,
    unpack_frames,
)
from flowtrace.errors import FlowtraceError
from flowtrace.model import Point, PointStats

#: What the helper may do, and nothing more (see the module's words on --privileged).
CAPABILITIES = (
    "NET_ADMIN",
    "NET_RAW",
    "SYS_ADMIN",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
    "DAC_OVERRIDE",
)
SECURITY = ("seccomp=unconfined", "apparmor=unconfined")
#: On each helper: which controller made it (process and machine), to find leftovers.
CONTROLLER_LABEL = "flowtrace.agent.controller"
#: How long a call may take before the agent is taken for dead.
CALL_TIMEOUT_S = 60.0
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ClockSample:
    """One exchange: sent (t1), received and answered there (t2, t3), back here (t4)."""

    t1: int
    t2: int
    t3: int
    t4: int


class _Pending:
    __slots__ = ("done", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None


class AgentGone(FlowtraceError):
    """The agent (or its helper container) ended while flowtrace still needed it."""


class HelperAgent:
    """One helper container on one host and its agent, for as long as a command runs."""

    def __init__(
        self,
        host: str,
        client: Any,
        *,
        local_socket: bool,
        skew_ns: int = 0,
        keep_image: bool = False,
    ) -> None:
        self.host = host
        #: Leave an image this run imported on the host (the lab's hosts); else remove it.
        self.keep_image = keep_image
        self.client = client
        self.local_socket = local_socket
        self.skew_ns = skew_ns
        self.container_id: str | None = None
        self.name = f"flowtrace-agent-{os.getpid()}-{secrets.token_hex(3)}"
        self.image: str | None = None
        self.image_imported = False
        self.facts: dict[str, Any] = {}
        self._sock: Any = None
        self._raw: Any = None
        self._write_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._reader: threading.Thread | None = None
        self._gone: str | None = None
        self._stderr: list[str] = []
        self.frames: list[FrameTuple] = []
        self.events: list[tuple[str, Any]] = []

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Create, attach, start, send the code, say hello: the agent answers calls after."""
        from docker.errors import APIError

        try:
            self.image, self.image_imported = ensure_agent_image(
                self.client, self.host, compress=not self.local_socket
            )
            self._create()
            self._sock = self.client.api.attach_socket(
                self.container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            self._raw = getattr(self._sock, "_sock", self._sock)
            self._reader = threading.Thread(
                target=self._read_loop, name=f"agent {self.host}", daemon=True
            )
            self._reader.start()
            self.client.api.start(self.container_id)
            self._write(code_line())
            self.facts = self.request("hello", self.host, self.skew_ns, timeout=START_TIMEOUT_S)
        except APIError as exc:
            self.close()
            raise FlowtraceError(
                f"host {self.host}'s engine refused flowtrace's helper: {_short(exc)}"
            ) from None
        except BaseException:
            self.close()
            raise
        return self.facts

    def _create(self) -> None:
        api = self.client.api
        host_config = api.create_host_config(
            auto_remove=True,
            network_mode="host",
            pid_mode="host",
            cap_add=list(CAPABILITIES),
            security_opt=list(SECURITY),
        )
        created = api.create_container(
            self.image,
            command=[AGENT_PYTHON, "-s", "-S", "-u", "-c", BOOTSTRAP],
            name=self.name,
            stdin_open=True,
            detach=False,  # with stdin_open: attach stdin once (StdinOnce), see the module
            tty=False,
            labels={AGENT_LABEL: "1", CONTROLLER_LABEL: f"{os.uname().nodename}:{os.getpid()}"},
            host_config=host_config,
        )
        self.container_id = created["Id"]

    def close(self) -> None:
        """Let the agent end, and remove the helper (idempotent; never raises)."""
        if self._sock is not None and self._gone is None:
            with contextlib.suppress(Exception):
                self.request("quit", timeout=2)
        if self._sock is not None:
            with contextlib.suppress(Exception):
                self._sock.close()
            self._sock = None
        if self.container_id is not None:
            from docker.errors import APIError, NotFound

            with contextlib.suppress(NotFound, APIError, OSError):
                self.client.api.remove_container(self.container_id, force=True)
            self.container_id = None
        if self.image_imported and not self.keep_image and self.image is not None:
            from docker.errors import APIError, NotFound

            # the host is left as it was found: the image goes with the run that brought it
            with contextlib.suppress(NotFound, APIError, OSError):
                self.client.api.remove_image(self.image)
            self.image_imported = False
        if self._reader is not None:
            self._reader.join(2)
            self._reader = None

    # --- the channel -----------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._gone is not None:
            raise AgentGone(self._gone)
        with self._write_lock:
            try:
                self._raw.sendall(data)
            except OSError as exc:
                raise AgentGone(f"the agent on {self.host} cannot be reached: {exc}") from None

    def _read_loop(self) -> None:
        from docker.utils.socket import frames_iter_no_tty

        records = RecordReader()
        try:
            for stream, data in frames_iter_no_tty(self._sock):
                if stream == 2:
                    self._stderr.append(data.decode(errors="replace"))
                    del self._stderr[:-40]
                    continue
                arrived = time.time_ns()
                for kind, payload in records.feed(data):
                    self._take(kind, payload, arrived)
        except (OSError, ValueError, ChannelError) as exc:
            self._end(f"the agent on {self.host} sent what flowtrace cannot read ({exc})")
            return
        self._end(self._ended_words())

    def _ended_words(self) -> str:
        said = "".join(self._stderr).strip().splitlines()
        last = f": {said[-1][:300]}" if said else ""
        return f"the agent on {self.host} ended{last}"

    def _end(self, why: str) -> None:
        if self._gone is None:
            self._gone = why
        for pending in list(self._pending.values()):
            pending.value = (False, AgentGone(self._gone))
            pending.done.set()

    def _take(self, kind: int, payload: bytes, arrived: int) -> None:
        if kind == FRAMES:
            self.frames.extend(unpack_frames(payload))
        elif kind == CLOCK:
            request, t2, t3 = CLOCK_ANSWER.unpack(payload)
            self._resolve(request, (True, (t2, t3, arrived)))
        elif kind == REPLY:
            request, ok, value = safe_loads(payload)
            self._resolve(request, (ok, value))
        elif kind == EVENT:
            self.events.append(safe_loads(payload))

    def _resolve(self, request: int, outcome: tuple[bool, Any]) -> None:
        pending = self._pending.get(request)
        if pending is not None:
            pending.value = outcome
            pending.done.set()

    def _submit(self, message: tuple[Any, ...]) -> tuple[int, _Pending]:
        request = next(self._ids)
        pending = self._pending[request] = _Pending()
        self._write(request_line((message[0], request, *message[1:])))
        return request, pending

    def _wait(self, request: int, pending: _Pending, timeout: float) -> Any:
        try:
            if not pending.done.wait(timeout):
                raise AgentGone(f"the agent on {self.host} did not answer within {timeout:.0f} s")
        finally:
            self._pending.pop(request, None)
        ok, value = pending.value
        if not ok:
            raise value
        return value

    def request(self, kind: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        """One request and its answer; the agent's exception is raised here."""
        request, pending = self._submit((kind, *args))
        return self._wait(request, pending, timeout)

    # --- what the agent does ---------------------------------------------------------------

    def call(self, netns_path: str | None, func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """endpoints.netns.HostRunner: func(*args) there, in the namespace at netns_path."""
        module, qualname = getattr(func, "__module__", ""), getattr(func, "__qualname__", "")
        if not module or "<" in qualname:
            raise FlowtraceError(
                f"{qualname or func!r} cannot run on host {self.host}: only module-level "
                "functions can (a flowtrace bug)"
            )
        return self.request("call", netns_path, module, qualname, args)

    def clock_sample(self) -> ClockSample:
        request = next(self._ids)
        pending = self._pending[request] = _Pending()
        line = request_line(("clock", request))
        t1 = time.time_ns()
        self._write(line)
        t2, t3, t4 = self._wait(request, pending, CALL_TIMEOUT_S)
        return ClockSample(t1, t2, t3, t4)

    def start_capture(
        self, points: list[Point], programs: dict[int, bytes], profile: str, filter_expr: str
    ) -> None:
        self.request("capture", points, programs, profile, filter_expr)

    def stop_capture(self) -> tuple[list[PointStats], list[str]]:
        stats, notes = self.request("stop")
        return list(stats), list(notes)

    @property
    def alive(self) -> bool:
        return self._gone is None and self._sock is not None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
