"""Which container engine flowtrace asks, and the one place its clients are made.

An engine is what answers on a socket, never a CLI on PATH.  The choice follows the
docker CLI: `--context NAME`, else DOCKER_HOST, else DOCKER_CONTEXT, else the current
context of ~/.docker/config.json, else Docker's default socket; `--engine podman`
asks Podman's Docker-compatible API instead (CONTAINER_HOST, Podman's rootful socket,
the socket flowtrace's scripts start), and when none answers flowtrace starts
`podman system service` on a socket of its own for as long as it runs.  With no
choice at all, Podman is the fallback when Docker's socket does not answer.  Which
engine answered is read from its version, not guessed from the socket's name.

The selection is process-wide (a trace, a lookup, the lab: one engine each), set by
`using()` around a library call; `close()` stops what flowtrace started.

What a trace reads (ping, version, the containers, Podman's pods and networks) goes over
the engine's socket with the standard library (flowtrace.endpoints.engine_http) when it
is a unix socket or TCP without TLS: the Docker SDK with requests and urllib3 is 0.11-0.15 s
of imports, more than a ping's own work.  TLS and ssh://
engines, and the lab, which builds images and containers, use the SDK's client
(`client()`, made on first use).  The docker CLI's config and contexts are read by
flowtrace.endpoints.docker_config; where to look, and what an answer says, is decided by
flowtrace.endpoints.engine_choice (pure).
"""

from __future__ import annotations

import atexit
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowtrace.endpoints.docker_config import DOCKER_SOCKET, current_context_name, docker_context
from flowtrace.endpoints.engine_choice import (
    FLOWTRACE_PODMAN_SOCKET,
    PODMAN_SOCKET,
    Candidate,
    EngineChoice,
    EngineInfo,
    candidates,
    identify,
    identify_ping,
    is_rootless,
)
from flowtrace.errors import DockerUnavailableError

if TYPE_CHECKING:
    from flowtrace.endpoints.podman_service import PodmanService

#: A client asks quickly when tracing; the lab, which imports images, gives it longer.
DEFAULT_TIMEOUT_S = 10.0
#: How long a look for containers that is only nice to have (naming namespaces, finding
#: the owner of an address) waits: a frozen engine must not hold up netns:/pid: endpoints.
AVAILABLE_WAIT_S = 2.0
#: The API version a client starts with (the Docker SDK's minimum) until the engine says its own.
MIN_API = "1.24"
#: Where rootful Podman records the network backend it chose (netavark or cni).
PODMAN_BACKEND_FILE = "/var/lib/containers/storage/defaultNetworkBackend"


# --- connections ---------------------------------------------------------------------------


@dataclass
class Connection:
    """What reads the engine (`api`), and what it is connected to.

    `api` has the reads a trace makes (inspect_container, containers, info, version):
    an engine_http.EngineAPI on a plain socket, else the SDK's APIClient.  `client`, the
    Docker SDK's DockerClient, is made on first use (the lab's work).
    """

    info: EngineInfo
    api: Any
    #: What was tried before it answered (for error messages), in words.
    tried: list[str] = field(default_factory=list)
    timeout: float = DEFAULT_TIMEOUT_S
    sdk: Any = None

    @property
    def client(self) -> Any:
        if self.sdk is None:
            self.sdk = _client(self.info, self.timeout)
        return self.sdk

    def close(self) -> None:
        if self.sdk is not None:
            self.sdk.close()
        self.api.close()


_choice = EngineChoice()
#: choice -> timeout -> connection: one engine (and one Podman API started) per choice.
_connections: dict[EngineChoice, dict[float, Connection]] = {}
_services: list[PodmanService] = []
#: host -> the error of an engine that did not answer in time (frozen, overloaded): this
#: process does not ask it again, so every later ask fails at once, not after another wait.
_timed_out: dict[str, DockerUnavailableError] = {}


@contextmanager
def using(choice: EngineChoice | None) -> Iterator[EngineChoice]:
    """Ask the engine `choice` names for the duration of the block (None, or a choice
    naming nothing: keep the current one, so a notebook's `using()` holds around calls)."""
    global _choice
    if choice is None or choice == EngineChoice():
        yield _choice
        return
    choice.check()
    before = _choice
    _choice = choice
    try:
        yield choice
    finally:
        _choice = before


def current_choice() -> EngineChoice:
    return _choice


def connect(timeout: float = DEFAULT_TIMEOUT_S) -> Connection:
    """The connection to the chosen engine (made once per choice and timeout, pinged)."""
    made = _connections.setdefault(_choice, {})
    if timeout not in made:
        if made:  # the same engine, asked with another timeout
            first = next(iter(made.values()))
            made[timeout] = _reconnect(first, timeout)
        else:
            made[timeout] = _open(_choice, timeout)
    return made[timeout]


def _client(info: EngineInfo, timeout: float) -> Any:
    import docker

    return docker.DockerClient(
        base_url=info.host, tls=info.tls, timeout=timeout, version=info.api_version or MIN_API
    )


def _reconnect(first: Connection, timeout: float) -> Connection:
    """The engine `first` reached, read with another timeout."""
    from flowtrace.endpoints.engine_http import EngineAPI, speaks

    if speaks(first.info.host, first.info.tls):
        return Connection(first.info, EngineAPI(first.info.host, timeout), first.tried, timeout)
    made = _client(first.info, timeout)
    return Connection(first.info, made.api, first.tried, timeout, made)


def client(timeout: float = DEFAULT_TIMEOUT_S) -> Any:
    """The Docker SDK client of the chosen engine: flowtrace's one client factory."""
    return connect(timeout).client


def api(timeout: float = DEFAULT_TIMEOUT_S) -> Any:
    """What reads the chosen engine for a trace: EngineAPI or the SDK's APIClient."""
    return connect(timeout).api


def available(timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    try:
        connect(timeout)
    except DockerUnavailableError:
        return False
    return True


def used() -> EngineInfo | None:
    """The engine this process asked under the current choice, None when none was."""
    made = _connections.get(_choice)
    return next(iter(made.values())).info if made else None


def used_meta() -> dict[str, object] | None:
    """`used()` as a manifest and --json meta carry it."""
    info = used()
    return info.as_dict() if info is not None else None


def close() -> None:
    """Close every client and stop the Podman services flowtrace started."""
    for made in _connections.values():
        for found in made.values():
            with suppress(Exception):
                found.close()
    _connections.clear()
    _timed_out.clear()
    while _services:
        _services.pop().stop()


def forget(choice: EngineChoice) -> None:
    """Close and drop the connections made for `choice` (its engine went away)."""
    for found in _connections.pop(choice, {}).values():
        with suppress(Exception):
            found.client.close()


def is_local(host: str) -> bool:
    """The engine at `host` runs on this machine: a unix socket, or TCP to a loopback
    address (pure)."""
    if host.startswith(("unix://", "http+unix://", "/")):
        return True
    if host.startswith(("tcp://", "http://", "https://")):
        address = host.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
        return address in ("localhost", "127.0.0.1", "::1")
    return False


def _open(choice: EngineChoice, timeout: float) -> Connection:
    plan = candidates(
        choice,
        os.environ,
        current_context_name(),
        docker_context,
        shutil.which("podman") is not None,
    )
    tried: list[str] = []
    for candidate in plan:
        found = _try(candidate, timeout, tried)
        if found is None:
            continue
        if candidate.expect and found.info.name != candidate.expect:
            found.close()
            raise DockerUnavailableError(
                f"{candidate.selected_by} leads to {found.info.name} {found.info.version} "
                f"at {found.info.host}, not {candidate.expect}"
            )
        found.tried = tried
        return found
    raise DockerUnavailableError(_nothing_answers(choice, tried))


def _nothing_answers(choice: EngineChoice, tried: list[str]) -> str:
    what = (
        "no container engine answers"
        if choice.engine is None
        else f"{choice.engine.capitalize()} does not answer"
    )
    return f"{what} ({'; '.join(tried)}): {_start_hint(choice.engine)}"


def _engine_word(candidate: Candidate) -> str:
    return "Podman engine" if candidate.expect == "podman" else "Docker engine"


def _where(candidate: Candidate) -> str:
    """`DOCKER_HOST=unix:///x`, `--context lab (ssh://host)`: where the user pointed."""
    if candidate.selected_by in ("DOCKER_HOST",):
        return f"DOCKER_HOST={candidate.host}"
    if candidate.selected_by.startswith("CONTAINER_HOST"):
        return f"CONTAINER_HOST={candidate.host}"
    return f"{candidate.host} ({candidate.selected_by})"


def _start_hint(engine: str | None) -> str:
    if engine == "podman":
        if not shutil.which("podman"):
            return "Podman is not installed (apt-get install podman)"
        return "start its API (`podman system service --time=0 unix:///run/podman/podman.sock`)"
    return "start dockerd (e.g. with `bash scripts/setup.sh`)"


def _restart_hint(engine: str | None) -> str:
    if engine == "podman":
        return "check `podman system service`, or choose another engine with --engine"
    return "check dockerd (`systemctl status docker`, its log), or choose another with --context"


def _try(candidate: Candidate, timeout: float, tried: list[str]) -> Connection | None:
    """A pinged connection at `candidate`, or None (with why in `tried`) when it is not
    explicit; an explicit candidate that does not answer is an error."""
    service = None
    host = candidate.host
    if candidate.start_podman:
        from flowtrace.endpoints.podman_service import PodmanServiceError, start_service

        try:
            service = start_service()
        except PodmanServiceError as exc:
            tried.append(f"starting Podman's API: {exc}")
            return None
        host = service.url
    elif host.startswith("unix://") and not os.path.exists(host[len("unix://") :]):
        tried.append(f"{candidate.selected_by}: no socket {host[len('unix://') :]}")
        if candidate.explicit:
            raise DockerUnavailableError(
                f"the {_engine_word(candidate)} does not answer at {_where(candidate)}: no "
                f"socket {host[len('unix://') :]}; {_start_hint(candidate.expect)}"
            )
        return None
    if host in _timed_out:  # it did not answer in time earlier in this process
        tried.append(f"{candidate.selected_by} at {host}: did not answer in time")
        if candidate.explicit:
            raise _timed_out[host]
        return None
    try:
        reader, made, (name, version, api) = _client_at(host, candidate.tls, timeout)
        backend, rootless = _engine_facts(reader, name, host)
    except _Unanswered as exc:
        if service is not None:
            service.stop()
        why = _short(exc)
        tried.append(f"{candidate.selected_by} at {host}: {why}")
        if "timed out" in str(exc).lower():
            _timed_out[host] = DockerUnavailableError(
                f"the {_engine_word(candidate)} at {_where(candidate)} did not answer within "
                f"{timeout:g} s (frozen or overloaded?); {_restart_hint(candidate.expect)}"
            )
            tried[-1] = f"{candidate.selected_by} at {host}: no answer within {timeout:g} s"
            if candidate.explicit:
                raise _timed_out[host] from None
            return None
        if candidate.explicit:
            raise DockerUnavailableError(
                f"the {_engine_word(candidate)} does not answer at {_where(candidate)} "
                f"({why}); {_start_hint(candidate.expect)}"
            ) from None
        return None
    selected_by = candidate.selected_by
    if service is not None:
        if not _services:
            atexit.register(close)  # a notebook's process stops it too when it ends
        _services.append(service)
    info = EngineInfo(
        name,
        version,
        api,
        host,
        selected_by,
        rootless,
        backend,
        service.pid if service is not None else None,
        candidate.tls,
    )
    return Connection(info, reader, [], timeout, made)


class _Unanswered(Exception):
    """The engine at a host did not answer (the SDK's or engine_http's error, in words)."""


def _client_at(host: str, tls: Any, timeout: float) -> tuple[Any, Any, tuple[str, str, str]]:
    """What reads the engine at `host` (EngineAPI, or the SDK's APIClient), the SDK's
    client when that is what reads it (else None), and (name, version, API version) from
    its answer to GET /_ping: Podman's /version takes half a second (it asks conmon and
    the OCI runtime for theirs), its /_ping a few milliseconds and says as much."""
    from flowtrace.endpoints.engine_http import EngineAPI, EngineError, speaks

    if speaks(host, tls):
        reader = EngineAPI(host, timeout)
        try:
            status, headers, _ = reader.request("/_ping")
            if status != 200:
                raise EngineError(status, f"GET /_ping answered {status}")
            return reader, None, identify_ping(headers) or identify(reader.version())
        except (EngineError, OSError, ValueError) as exc:
            raise _Unanswered(_short(exc)) from None
    import docker
    from docker.errors import APIError, DockerException

    try:
        probe = docker.DockerClient(base_url=host, tls=tls, timeout=timeout, version=MIN_API)
        try:
            answer = probe.api.get(f"{probe.api.base_url}/_ping", timeout=timeout)
            if answer.status_code != 200:
                raise APIError(f"GET /_ping answered {answer.status_code}")
            found = identify_ping(answer.headers) or identify(probe.version())
        finally:
            probe.close()
        made = docker.DockerClient(
            base_url=host, tls=tls, timeout=timeout, version=found[2] or MIN_API
        )
    except (DockerException, OSError) as exc:
        raise _Unanswered(_short(exc)) from None
    return made.api, made, found


def _engine_facts(reader: Any, name: str, host: str) -> tuple[str | None, bool]:
    """(network backend, rootless) of the engine, read cheaply: a local engine is rootless
    when its socket is not root's (a rootless dockerd's or Podman's is its user's); a
    remote Docker says so in /info (8-14 ms, which a local trace does not spend); Podman's
    network backend is what it recorded in its storage on first use."""
    unix = host.startswith(("unix://", "http+unix://"))  # http+unix://: a context the SDK made
    path = host.split("://", 1)[1] if unix else ""
    local_socket = unix and os.path.exists(path)
    if name != "podman":
        if local_socket:
            return None, os.stat(path).st_uid != 0
        try:
            return None, is_rootless(reader.info())
        except Exception as exc:  # EngineError, the SDK's errors
            raise _Unanswered(_short(exc)) from None
    if not local_socket:
        return None, False
    rootless = os.stat(path).st_uid != 0
    backend = None
    if not rootless:
        try:
            backend = Path(PODMAN_BACKEND_FILE).read_text().strip() or None
        except OSError:
            backend = None
    return backend, rootless


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def elsewhere_hint(name: str) -> str:
    """`; Podman has a container named c1: add --engine podman` when the other local
    engine, answering on its usual socket, knows a container the chosen one does not;
    else "".  Only sockets that already answer are asked: nothing is started for a hint."""
    current = used()
    if current is None:
        return ""
    other = "podman" if current.name == "docker" else "docker"
    sockets: tuple[str, ...] = (DOCKER_SOCKET,)
    if other == "podman":
        named = os.environ.get("CONTAINER_HOST", "")
        sockets = (*([named] if named.startswith("unix://") else []), PODMAN_SOCKET,
                   FLOWTRACE_PODMAN_SOCKET)  # fmt: skip
    from flowtrace.endpoints.engine_http import EngineAPI, EngineError

    for url in sockets:
        if url == current.host or not os.path.exists(url[len("unix://") :]):
            continue
        probe = EngineAPI(url, timeout=3)
        try:
            _, headers, _ = probe.request("/_ping")
            if (identify_ping(headers) or identify(probe.version()))[0] != other:
                continue
            probe.inspect_container(name)
        except (EngineError, OSError, ValueError):
            continue
        return f"; {other.capitalize()} has a container named {name}: add --engine {other}"
    return ""
