"""Shared fixtures for tests on the real kernel and Docker engine.

`lab` brings the Docker lab up once per session and returns its LabState.  Several
pytest sessions may run on one machine at once (several engineers, one dockerd), so
each session holds a shared lock on LAB_USERS_LOCK while it uses the lab; the last
session out takes the lab down, and only if the lab was not already up before it
started.  Tests that take the lab down themselves ask for `lab_exclusive`: they run
last in the session (after every test that relies on `lab`), wait until no other
session uses the lab, and bring it back up when they finish.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowtrace import lab as lab_module
from flowtrace.lab import LabState
from flowtrace.lab import podman as podman_lab_module

# The modules share helpers (`from test_trace import ...`); importlib mode needs the path.
sys.path.insert(0, str(Path(__file__).parent))

import leftovers  # needs the path above

#: fail (the default): a module that leaves the host changed fails at its teardown;
#: warn: it is only reported; off: not checked.
LEFTOVERS = os.environ.get("FLOWTRACE_LEFTOVERS", "fail")

LAB_USERS_LOCK = "/run/lock/flowtrace-lab.users"
#: How long a destructive lab test waits for other sessions to finish with the lab.
EXCLUSIVE_WAIT_S = float(os.environ.get("FLOWTRACE_LAB_WAIT", "300"))


def is_root() -> bool:
    return os.geteuid() == 0


_SESSION_PID = os.getpid()


def _interrupted(signum: int, frame: object) -> None:
    if os.getpid() != _SESSION_PID:
        # A forked child that runs Python without exec (pyroute2's NetNS helper) inherits
        # this handler: it must end as SIGTERM ends it, not unwind pytest's session (and
        # run the module fixtures' checks again, in its own namespace).
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (a `timeout`, a CI job cancelled) ends the session as Ctrl-C does: every
    # fixture's finalizer still removes what its test made.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupted)
    config.addinivalue_line(
        "markers",
        "lab_destructive: takes the shared lab down; runs after every other test",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the tests that take the lab down after all the tests that rely on it."""
    keep = [item for item in items if item.get_closest_marker("lab_destructive") is None]
    last = [item for item in items if item.get_closest_marker("lab_destructive") is not None]
    items[:] = keep + last


@pytest.fixture(autouse=True)
def _integration_needs_root(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("integration") and not is_root():
        pytest.skip("integration test: needs root (namespaces, veths, the Docker engine)")


@pytest.fixture(scope="module", autouse=True)
def _nothing_left_changed(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every integration module leaves the host as it found it (see leftovers.py)."""
    if not is_root() or LEFTOVERS == "off":
        yield
        return
    before = leftovers.snapshot()
    yield
    changes = leftovers.compare(before, leftovers.snapshot())
    if changes:
        text = leftovers.describe(changes, request.module.__name__) + (
            "\n(on a shared host a change another session made meanwhile shows here too; "
            "FLOWTRACE_LEFTOVERS=warn reports without failing)"
        )
        if LEFTOVERS == "warn":
            import warnings

            warnings.warn(text, stacklevel=1)
        else:
            pytest.fail(text, pytrace=False)


@pytest.fixture(scope="session")
def root() -> None:
    """Skip (not fail) what needs root when the tests run as another user."""
    if not is_root():
        pytest.skip("needs root (namespaces, veths, the Docker engine)")


class LabUsers:
    """This session's hold on the lab: shared while testing, exclusive to take it down."""

    def __init__(self, path: str = LAB_USERS_LOCK) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._file = open(path, "a")  # noqa: SIM115 - held for the whole session
        fcntl.flock(self._file, fcntl.LOCK_SH)

    def try_exclusive(self) -> bool:
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def exclusive(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while not self.try_exclusive():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"another test session has used the flowtrace lab for over {wait_s:.0f} s "
                    f"(it holds {self.path}); set FLOWTRACE_LAB_WAIT to wait longer"
                )
            time.sleep(0.5)

    def shared(self) -> None:
        fcntl.flock(self._file, fcntl.LOCK_SH)

    def close(self) -> None:
        self._file.close()


@pytest.fixture(scope="session")
def lab_users(root: None) -> Iterator[LabUsers]:
    users = LabUsers()
    try:
        yield users
    finally:
        users.close()


@pytest.fixture(scope="session")
def docker_engine(root: None) -> None:
    """Docker's tests need Docker: on a machine with Podman only they are skipped."""
    from flowtrace.endpoints import engines
    from flowtrace.endpoints.engines import EngineChoice
    from flowtrace.errors import DockerUnavailableError

    try:
        with engines.using(EngineChoice("docker")):
            engines.connect()
    except DockerUnavailableError as exc:
        pytest.skip(f"no Docker engine here ({exc.message})")


@pytest.fixture(scope="session")
def _lab_found_up(lab_users: LabUsers, docker_engine: None) -> bool:
    """Whether the lab was whole before this session touched it."""
    return lab_module.status().complete


@pytest.fixture(scope="session")
def lab(lab_users: LabUsers, _lab_found_up: bool) -> Iterator[LabState]:
    """The lab, up for the whole session; taken down at the end if this session made it."""
    state = lab_module.up()
    yield state
    if not _lab_found_up and lab_users.try_exclusive():
        lab_module.down()


@pytest.fixture
def lab_now(lab: LabState) -> LabState:
    """The lab as it is at this moment (container PIDs and ids can change)."""
    state = lab_module.status()
    return state if state.complete else lab_module.up()


@pytest.fixture
def lab_exclusive(lab: LabState, lab_users: LabUsers) -> Iterator[None]:
    """Sole use of the lab for a test that takes it down; the lab is back up afterwards.

    Mark such a test `lab_destructive` so it runs after the tests that rely on `lab`.
    """
    lab_users.exclusive(EXCLUSIVE_WAIT_S)
    try:
        yield
    finally:
        try:
            lab_module.up()
        finally:
            lab_users.shared()


# --- Podman -----------------------------------------------------------------------------------

PODMAN_LAB_USERS_LOCK = "/run/lock/flowtrace-podman-lab.users"


@pytest.fixture(scope="session")
def podman_api(root: None) -> Iterator[dict[str, str]]:
    """The environment for flowtrace commands that ask Podman, with its API answering.

    Rootful Podman serves its API only while `podman system service` runs: the one
    on Podman's own socket is used when it answers (and left alone), else this session
    starts one on a socket of flowtrace's own and stops it at the end.  CONTAINER_HOST
    tells flowtrace where it is.
    """
    import shutil

    from flowtrace.endpoints.podman_service import answers, start_service

    if shutil.which("podman") is None:
        pytest.skip("Podman is not installed (bash scripts/setup.sh --for-tests installs it)")
    env = dict(os.environ)
    env.pop("DOCKER_HOST", None)
    if answers("/run/podman/podman.sock"):
        env["CONTAINER_HOST"] = "unix:///run/podman/podman.sock"
        yield env
        return
    service = start_service(f"/run/flowtrace/podman-tests-{os.getpid()}.sock")
    leftovers.session_owned(service.pid)
    env["CONTAINER_HOST"] = service.url
    try:
        yield env
    finally:
        service.stop()


@pytest.fixture(scope="module")
def podman_lab_users(podman_api: dict[str, str]) -> Iterator[LabUsers]:
    """This session's hold on the Podman lab (shared; exclusive to take it down)."""
    users = LabUsers(PODMAN_LAB_USERS_LOCK)
    try:
        yield users
    finally:
        users.close()


@pytest.fixture(scope="module")
def podman_lab(podman_lab_users: LabUsers) -> Iterator[LabState]:
    """The Podman lab for one module, taken down after it when this session made it and
    no other session uses it (module scope: Docker's lab tests that take the outside host
    down, last in the session, find it gone)."""
    from flowtrace.lab import netavark_chains

    found_up = podman_lab_complete()
    chains_before = netavark_chains.present()
    state = podman_lab_module.up()
    yield state
    if not found_up and podman_lab_users.try_exclusive():
        podman_lab_module.down()
        running = subprocess.run(["podman", "ps", "-q"], capture_output=True, text=True).stdout
        if not chains_before and not running.split():
            # netavark never removes its chains; the lab must, when they were its doing
            assert not netavark_chains.present(), "netavark's chains left after lab down"


def podman_lab_complete() -> bool:
    try:
        return podman_lab_module.status().complete
    except Exception:  # no lab yet, or Podman's state half made
        return False


# The rootless Podman user, a module-scoped fixture of its own module (tests/integration/).
from rootless_user import rootless_user  # noqa: E402, F401 - sys.path is set above
