"""Which engine to ask, decided without asking it: the user's choice, the places an engine
may answer in the docker CLI's order, and what an answer says about the engine (pure).

flowtrace.endpoints.engines connects; this module only decides, so it is tested on
recorded environments, contexts and /_ping headers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowtrace.endpoints.docker_config import DOCKER_SOCKET
from flowtrace.errors import ExitStatus, FlowtraceError

ENGINE_NAMES = ("docker", "podman")
#: Podman's rootful API socket (podman.socket under systemd).
PODMAN_SOCKET = "unix:///run/podman/podman.sock"
#: Where scripts/setup.sh and the tests start Podman's API when nothing else serves it.
FLOWTRACE_RUN_DIR = "/run/flowtrace"
FLOWTRACE_PODMAN_SOCKET = f"unix://{FLOWTRACE_RUN_DIR}/podman.sock"


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
