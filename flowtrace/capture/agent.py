"""The capture agent: flowtrace's side on another host, inside the helper container.

The helper runs with the host's pid and network namespaces, so the agent sees that
host as flowtrace sees this one: it enters namespaces by /proc/PID/ns/net, and those
that exist only inside dockerd's own mount namespace (an overlay network's sandbox,
EXEC_ROOT/netns/1-<id>) through /proc/DOCKERD_PID/root.  It opens points exactly as
a local capture does, with the same CaptureSession and rings (the filter comes
compiled from the controller), and streams every frame back as it is read.  Whatever
else the controller needs of the host (a namespace's links, routes, rules, conntrack
entries) it asks as a call of one of flowtrace's own functions by name, run here in
the namespace it names (endpoints.netns), so topology reads a remote host with the
code it reads this one with.

It reads requests on stdin and answers on stdout (endpoints.channel), stamps clock
requests the moment they arrive, and ends when stdin closes: when the controller
exits, however it exits, the agent does too and the engine removes the helper.  It
imports only the standard library and flowtrace's own stdlib-only modules until a
call asks for more (topology's readers bring pyroute2, sent with the code).
"""

from __future__ import annotations

import importlib
import pickle
import sys
import threading
import time
from typing import Any, BinaryIO

from flowtrace.capture.ring import RingProfile
from flowtrace.capture.session import CaptureSession
from flowtrace.endpoints.channel import (
    PICKLE_PROTOCOL,
    clock_record,
    pack_frames,
    read_request,
    reply_record,
)
from flowtrace.endpoints.hostfacts import host_facts
from flowtrace.endpoints.netns import run_in_netns
from flowtrace.errors import FlowtraceError
from flowtrace.model import Point, PointStats

#: How often captured frames are sent on.
SHIP_S = 0.002
#: Imported in the background after hello (see _warm).
WARM_MODULES = (
    "flowtrace.topology.kernel",
    "pyroute2",
    "flowtrace.topology.conntrack",
    "pyroute2.netlink.nfnetlink.nfctsocket",
    "flowtrace.topology.netfilter",
)


# --- the agent ---------------------------------------------------------------------------


def _portable(exc: BaseException) -> BaseException:
    """An exception the controller can take: flowtrace's and built-in ones as they are,
    others (a netlink error) as a FlowtraceError with their words."""
    module = type(exc).__module__
    if module == "builtins" or module.startswith("flowtrace"):
        try:
            pickle.dumps(exc, protocol=PICKLE_PROTOCOL)
            return exc
        except Exception:
            pass
    return FlowtraceError(f"{type(exc).__name__}: {exc}")


def _warm() -> None:
    """Import what the controller asks for first (topology's readers and pyroute2) while
    it is still busy elsewhere: a call waits on the import lock, never on a second import."""
    for module in WARM_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            return


def _function(module: str, qualname: str) -> Any:
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


class Agent:
    """Requests in, answers and frames out; one capture at a time."""

    def __init__(self, requests: BinaryIO, answers: BinaryIO) -> None:
        self._requests = requests
        self._answers = answers
        self._lock = threading.Lock()
        self.skew_ns = 0
        self.host = ""
        self._session: CaptureSession | None = None
        self._shipped = 0
        self._shipper: threading.Thread | None = None
        self._shipping = threading.Event()

    def now(self) -> int:
        """This host's clock (plus the skew a test asked for)."""
        return time.time_ns() + self.skew_ns

    def write(self, data: bytes) -> None:
        with self._lock:
            self._answers.write(data)
            self._answers.flush()

    def run(self) -> None:
        threading.Thread(target=_warm, name="warm", daemon=True).start()
        try:
            while True:
                line = self._requests.readline()
                received = self.now()
                if not line:
                    return  # the controller is gone
                message = read_request(line)
                kind, request = message[0], message[1]
                if kind == "clock":
                    self.write(clock_record(request, received, self.now()))
                    continue
                if kind == "quit":
                    self.write(reply_record(request, True, None))
                    return
                try:
                    handler = getattr(self, f"do_{kind}")
                    value, ok = handler(*message[2:]), True
                except BaseException as exc:  # handed to the controller
                    value, ok = _portable(exc), False
                self.write(reply_record(request, ok, value))
        finally:
            self.close()

    # --- requests -------------------------------------------------------------------------

    def do_hello(self, host: str, skew_ns: int) -> dict[str, Any]:
        self.host, self.skew_ns = host, skew_ns
        return host_facts()

    def do_call(self, path: str | None, module: str, qualname: str, args: tuple[Any, ...]) -> Any:
        func = _function(module, qualname)
        return func(*args) if path is None else run_in_netns(path, func, *args)

    def do_capture(
        self, points: list[Point], programs: dict[int, bytes], profile: str, filter_expr: str
    ) -> None:
        if self._session is not None:
            raise FlowtraceError("the agent is capturing already")
        session = CaptureSession(
            points,
            filter_expr,
            None,
            keep_frames=True,
            profile=RingProfile[profile],
            programs=programs,
        )
        session.start()  # the barrier: every point's ring is bound when this returns
        self._session, self._shipped = session, 0
        self._shipping.set()
        self._shipper = threading.Thread(target=self._ship_loop, name="ship", daemon=True)
        self._shipper.start()

    def do_stop(self) -> tuple[list[PointStats], list[str]]:
        session = self._session
        if session is None:
            return [], []
        try:
            session.stop()
        finally:
            self._shipping.clear()
            if self._shipper is not None:
                self._shipper.join(5)
            self._ship(session)
            self._session = None
        return session.snapshot(), session.notes()

    # --- frames ---------------------------------------------------------------------------

    def _ship(self, session: CaptureSession) -> None:
        new = session.frames(since=self._shipped)
        if not new:
            return
        self._shipped += len(new)
        skew = self.skew_ns
        self.write(
            pack_frames((f.point, f.time_ns + skew, f.data, f.orig_len, f.outbound) for f in new)
        )

    def _ship_loop(self) -> None:
        while self._shipping.is_set():
            session = self._session
            if session is not None:
                self._ship(session)
            time.sleep(SHIP_S)

    def close(self) -> None:
        if self._session is not None:
            try:
                self._session.stop()
            finally:
                self._session = None


def serve() -> None:
    """The helper's main: requests on stdin, answers on stdout, until stdin closes."""
    Agent(sys.stdin.buffer, sys.stdout.buffer).run()
