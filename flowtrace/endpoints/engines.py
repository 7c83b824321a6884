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
flowtrace.endpoints.docker_config.
"""

from __future__ import annotations

import atexit
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowtrace.endpoints.docker_config import DOCKER_SOCKET, current_context_name, docker_context
from flowtrace.errors import DockerUnavailableError, ExitStatus, FlowtraceError

if TYPE_CHECKING:
    from flowtrace.endpoints.podman_service import PodmanService

ENGINE_NAMES = ("docker", "podman")
#: Podman's rootful API socket (podman.socket under systemd).
PODMAN_SOCKET = "unix:///run/podman/podman.sock"
#: Where scripts/setup.sh and the tests start Podman's API when nothing else serves it.
FLOWTRACE_RUN_DIR = "/run/flowtrace"
FLOWTRACE_PODMAN_SOCKET = f"unix://{FLOWTRACE_RUN_DIR}/podman.sock"
#: A client asks quickly when tracing; the lab, which imports images, gives it longer.
DEFAULT_TIMEOUT_S = 10.0
#: How long a look for containers that is only nice to have (naming namespaces, finding
#: the owner of an address) waits: a frozen engine must not hold up netns:/pid: endpoints.
AVAILABLE_WAIT_S = 2.0
#: The API version a client starts with (the Docker SDK's minimum) until the engine says its own.
MIN_API = "1.24"
#: Where rootful Podman records the network backend it chose (netavark or cni).
PODMAN_BACKEND_FILE = "/var/lib/containers/storage/defaultNetworkBackend"


@dataclass(frozen=True)
class EngineChoice:
    """What the user asked for: an engine by name, a Docker context, or neither."""

    engine: str | None = None
    context: str | None = None
    #: A Docker engine's own address (as `docker -H`), e.g. the IPv6 lab's private
    #: engine; `selected_by` says in words what it is.
    host: str | None = None
    selected_by: str = "-H"

    def check(self) -> None:
        if self.engine is not None and self.engine not in ENGINE_NAMES:
            raise FlowtraceError(
                f"unknown engine {self.engine!r}: choose docker or podman", ExitStatus.USAGE
            )


@dataclass(frozen=True)
class Candidate:
    """One place an engine may answer, and why flowtrace looks there."""

    host: str  # the Docker SDK's base_url
    selected_by: str  # in words: "DOCKER_HOST", "--context lab", "Docker's default socket"
    #: The engine it must be ("docker", "podman"), None: whichever answers.
    expect: str | None = None
    #: The user named it: it alone is tried, and it must answer.
    explicit: bool = False
    tls: Any = None
    #: Not a socket yet: start Podman's API on a socket of flowtrace's own.
    start_podman: bool = False


@dataclass(frozen=True)
class EngineInfo:
    """The engine that answered, as manifests, --json meta and trace headers show it."""

    name: str  # "docker", "podman"
    version: str
    api_version: str = ""
    host: str = ""
    selected_by: str = ""
    rootless: bool = False
    #: Podman's network backend (netavark, cni); None for Docker.
    network_backend: str | None = None
    #: flowtrace started the API service for this run (pid), and stops it at the end.
    service_pid: int | None = None
    #: The TLS settings it was reached with (a context's, DOCKER_TLS_VERIFY's).
    tls: Any = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "api_version": self.api_version,
            "host": self.host,
            "selected_by": self.selected_by,
            "rootless": self.rootless,
            "network_backend": self.network_backend,
            "service_started_by_flowtrace": self.service_pid is not None,
            "service_pid": self.service_pid,
            "summary": self.describe(),
        }

    def describe(self) -> str:
        """`podman 4.3.1 (rootful, netavark) at unix:///run/podman/podman.sock (--engine
        podman)`: one line for a trace's header."""
        traits = ["rootless" if self.rootless else "rootful"]
        if self.network_backend:
            traits.append(self.network_backend)
        text = f"{self.name} {self.version} ({', '.join(traits)})"
        why = [self.selected_by] if self.selected_by else []
        if self.service_pid is not None:
            why.append(f"flowtrace started its API for this run, pid {self.service_pid}")
        else:
            text += f" at {self.host}"
        return text + (f" ({'; '.join(why)})" if why else "")


# --- pure decisions ----------------------------------------------------------------------

ContextLookup = Callable[[str], "tuple[str, Any] | None"]


def candidates(
    choice: EngineChoice,
    environ: Mapping[str, str],
    current_context: str | None,
    context_host: ContextLookup,
    podman_installed: bool,
) -> list[Candidate]:
    """Where to look for the engine, in order, as the docker CLI would (pure).

    current_context: the `currentContext` of the docker CLI's config (None: default);
    context_host(name): a context's (host, tls), None when there is no such context.
    """
    choice.check()
    if choice.host:
        return [Candidate(choice.host, choice.selected_by, "docker", explicit=True)]
    if choice.context:
        return [
            _context_candidate(choice.context, f"--context {choice.context}", choice, context_host)
        ]
    if choice.engine == "podman":
        return _podman_candidates(environ, podman_installed, explicit=True)
    found: list[Candidate] = []
    expect = choice.engine  # "docker" or None
    host = environ.get("DOCKER_HOST")
    if host:
        return [Candidate(host, "DOCKER_HOST", expect, explicit=True, tls=_env_tls(environ))]
    named = environ.get("DOCKER_CONTEXT") or None
    if named and named != "default":
        return [_context_candidate(named, f"DOCKER_CONTEXT={named}", choice, context_host)]
    if current_context and current_context != "default" and not named:
        return [
            _context_candidate(
                current_context, f"docker context {current_context} (current)", choice, context_host
            )
        ]
    found.append(Candidate(DOCKER_SOCKET, "Docker's default socket", expect))
    if choice.engine is None:
        found += _podman_candidates(environ, podman_installed, explicit=False)
    return found


def _context_candidate(
    name: str, why: str, choice: EngineChoice, context_host: ContextLookup
) -> Candidate:
    found = context_host(name)
    if found is None:
        raise FlowtraceError(
            f"no Docker context named {name!r} (see `docker context ls`)", ExitStatus.NOT_FOUND
        )
    host, tls = found
    return Candidate(host or DOCKER_SOCKET, why, choice.engine, explicit=True, tls=tls)


def _podman_candidates(
    environ: Mapping[str, str], podman_installed: bool, explicit: bool
) -> list[Candidate]:
    why = "--engine podman" if explicit else "no Docker engine answers"
    host = environ.get("CONTAINER_HOST")
    if host:
        return [Candidate(host, f"CONTAINER_HOST ({why})", "podman", explicit=True)]
    found = [
        Candidate(PODMAN_SOCKET, f"Podman's socket ({why})", "podman"),
        Candidate(FLOWTRACE_PODMAN_SOCKET, f"flowtrace's Podman socket ({why})", "podman"),
    ]
    if podman_installed:
        found.append(Candidate("", f"{why}", "podman", start_podman=True))
    return found


def _env_tls(environ: Mapping[str, str]) -> Any:
    """DOCKER_TLS_VERIFY / DOCKER_CERT_PATH as the Docker SDK reads them (None: no TLS)."""
    if not (environ.get("DOCKER_TLS_VERIFY") or environ.get("DOCKER_CERT_PATH")):
        return None
    from docker.utils import kwargs_from_env

    return kwargs_from_env(environment=dict(environ)).get("tls")


def identify(version: Mapping[str, Any]) -> tuple[str, str, str]:
    """(engine name, version, API version) from the answer to GET /version (pure).

    Podman's Docker-compatible API names a "Podman Engine" component; Docker's names
    "Engine".
    """
    components = version.get("Components") or []
    names = {str(c.get("Name", "")) for c in components if isinstance(c, Mapping)}
    name = "podman" if any("podman" in n.lower() for n in names) else "docker"
    return name, str(version.get("Version", "?")), str(version.get("ApiVersion", ""))


def is_rootless(info: Mapping[str, Any]) -> bool:
    """Whether GET /info says the engine runs rootless (Docker and Podman both list
    `name=rootless` among SecurityOptions; Podman's own info says host.security.rootless)."""
    options = info.get("SecurityOptions") or []
    if any("name=rootless" in str(o) for o in options):
        return True
    host = info.get("host") or {}
    security = host.get("security") if isinstance(host, Mapping) else None
    return bool(isinstance(security, Mapping) and security.get("rootless"))


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


def identify_ping(headers: Mapping[str, str]) -> tuple[str, str, str] | None:
    """(engine name, version, API version) from the headers of GET /_ping (pure): Podman
    sends Libpod-Api-Version, Docker `Server: Docker/VERSION (os)`; None when neither."""
    headers = {str(name).lower(): value for name, value in headers.items()}
    api = str(headers.get("api-version", ""))
    if headers.get("libpod-api-version"):
        return "podman", str(headers["libpod-api-version"]), api
    server = str(headers.get("server", ""))
    if server.startswith("Docker/"):
        return "docker", server.removeprefix("Docker/").split()[0], api
    return None


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
