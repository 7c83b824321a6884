"""The engine's word on the containers of a run: their events, read while the run goes on.

A container that dies, restarts or is removed during a trace takes its interfaces with
it; the engine says when and why (`die` with its exit code, `kill` with the signal).
`ContainerEvents` subscribes to the events of the named containers (GET /events, which
Podman's compatible API serves too, through engine_http's EngineAPI or, for TLS and
ssh:// engines, the Docker SDK's APIClient: the same `events()`) in a thread of its own, asking
for the events since the run began, so the run never waits for it: a frozen engine
holds up nothing, and the run says once, at its end, that the engine never answered.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: Actions that change what a container's network can do.
WATCHED_ACTIONS = ("kill", "die", "stop", "start", "restart", "destroy", "oom", "pause", "unpause")


@dataclass(frozen=True)
class ContainerEvent:
    """One event of a watched container, as the engine stamped it."""

    time_ns: int
    action: str  # die, kill, restart, destroy...
    name: str
    attributes: dict[str, str] = field(default_factory=dict)


def event_from(raw: Any) -> ContainerEvent | None:
    """A container event from the engine's JSON; None for anything else."""
    if not isinstance(raw, dict) or raw.get("Type", "container") != "container":
        return None
    action = str(raw.get("Action") or raw.get("status") or "")
    action = action.split(":", 1)[0]  # "exec_start: sh" and the like
    action = {"died": "die", "remove": "destroy"}.get(action, action)  # Podman's words
    if action not in WATCHED_ACTIONS:
        return None
    actor = raw.get("Actor") or {}
    attributes = {str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()}
    name = attributes.get("name") or str(raw.get("id", ""))[:12]
    stamp = raw.get("timeNano") or int(raw.get("time") or 0) * 1_000_000_000
    return ContainerEvent(int(stamp), action, name, attributes)


class ContainerEvents:
    """The events of some containers, collected by a thread from `start` to `stop`."""

    def __init__(self, api: Any, names: Sequence[str]) -> None:
        """api: what reads the engine (engines.api(): EngineAPI or the SDK's APIClient)."""
        self._api = api
        self.names = sorted(set(names))
        self._events: list[ContainerEvent] = []
        self._lock = threading.Lock()
        self._stream: Any = None
        self._subscribed = threading.Event()
        self._since = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: Why the engine's word is missing (it did not answer, its stream ended), if so.
        self.problem: str | None = None
        #: When the event stream ended on the engine's side (ns), if it did.
        self.ended_ns: int | None = None

    def start(self, wait_s: float = 0.0) -> None:
        """Subscribe, in the thread, to the events since now; wait at most wait_s for it."""
        self._since = time.time_ns()
        self._thread = threading.Thread(target=self._run, name="flowtrace-events", daemon=True)
        self._thread.start()
        if wait_s:
            self._subscribed.wait(wait_s)

    def _run(self) -> None:
        seconds, nanos = divmod(self._since, 1_000_000_000)
        try:
            stream = self._api.events(
                since=f"{seconds}.{nanos:09d}", filters={"container": self.names}, decode=True
            )
        except Exception as exc:  # the engine went away or refused: the run goes on
            self.problem = f"the container engine's events are not available ({_short(exc)})"
            self._subscribed.set()
            return
        self._stream = stream
        self._subscribed.set()
        try:
            for raw in stream:
                event = event_from(raw)
                if event is not None:
                    with self._lock:
                        self._events.append(event)
        except Exception:  # the connection broke: the same as the stream ending
            pass
        if not self._stopping:
            self.ended_ns = time.time_ns()

    def events(self) -> list[ContainerEvent]:
        with self._lock:
            return list(self._events)

    def stop(self) -> None:
        self._stopping = True
        if not self._subscribed.is_set() and self.problem is None:
            self.problem = (
                "the container engine never answered the subscription to its events: a "
                "container that stopped during the run could not be named"
            )
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):  # already closed by the engine
                stream.close()
        if self._thread is not None:
            self._thread.join(1.0)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]
