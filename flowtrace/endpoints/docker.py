"""Container facts from the chosen engine, turned into namespaces.

The engine is Docker or Podman's Docker-compatible API, whichever
flowtrace.endpoints.engines chose; Podman's own facts (pods, infra containers) come
from flowtrace.endpoints.podman.  The engine is only asked when the user names a
container (or when flowtrace wants names for namespaces it found), so
netns:/pid:/host endpoints work with no engine at all.  The reads go through
`engines.api()`: the engine's socket with the standard library (endpoints.engine_http)
when it is a unix socket or TCP without TLS, else the Docker SDK's APIClient.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from flowtrace.endpoints import engines
from flowtrace.endpoints.podman import PodFacts, pod_of
from flowtrace.errors import (
    DockerUnavailableError,
    NoPathError,
    NotFoundError,
    NotRunningError,
)


@dataclass(frozen=True)
class ContainerNet:
    """What the engine says about one container's networking."""

    name: str
    id: str
    pid: int
    running: bool
    status: str
    network_mode: str  # "default", "bridge", "host", "none", "container:<id>", a network name
    #: network name -> IPv4 address on it
    addresses: dict[str, str]
    #: "80/tcp" -> [(host ip, host port)]
    ports: dict[str, list[tuple[str, int]]]
    #: The files the engine bind-mounts as the container's /etc/resolv.conf and /etc/hosts.
    resolv_conf: str = ""
    hosts_file: str = ""
    #: "docker" or "podman": the engine that runs it.
    engine: str = "docker"
    #: network name -> global IPv6 address on it (networks made with --ipv6)
    addresses6: dict[str, str] = field(default_factory=dict)

    @property
    def all_addresses(self) -> tuple[str, ...]:
        """Its IPv4 and IPv6 addresses on every network."""
        return (*self.addresses.values(), *self.addresses6.values())


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def _engine_call(call: Any, *args: str) -> Any:
    """Call an engine read; the SDK's errors and EngineError as (status, message) errors."""
    from flowtrace.endpoints.engine_http import EngineError

    try:
        return call(*args)
    except EngineError as exc:
        raise _EngineRefused(exc.status, _short(exc)) from None
    except Exception as exc:  # the SDK's (docker, requests, urllib3): status 0, no answer
        if not type(exc).__module__.startswith(("docker", "requests", "urllib3")):
            raise
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise _EngineRefused(int(status or 0), _short(exc)) from None


class _EngineRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def docker_available() -> bool:
    """Whether the chosen engine (Docker or Podman) answers, asked with a short wait
    (engines.AVAILABLE_WAIT_S): a frozen engine must not hold up netns:/pid: endpoints."""
    return engines.available(engines.AVAILABLE_WAIT_S)


def _from_attrs(attrs: dict[str, Any], engine: str = "docker") -> ContainerNet:
    state = attrs.get("State", {})
    host_config = attrs.get("HostConfig", {})
    networks = attrs.get("NetworkSettings", {}).get("Networks") or {}
    ports_raw = attrs.get("NetworkSettings", {}).get("Ports") or {}
    ports: dict[str, list[tuple[str, int]]] = {}
    for key, bindings in ports_raw.items():
        if bindings:
            ports[key] = [(b.get("HostIp") or "0.0.0.0", int(b["HostPort"])) for b in bindings]
    return ContainerNet(
        name=attrs.get("Name", "").lstrip("/"),
        id=attrs.get("Id", ""),
        pid=int(state.get("Pid") or 0),
        running=bool(state.get("Running")),
        status=str(state.get("Status", "unknown")),
        network_mode=str(host_config.get("NetworkMode", "default")),
        addresses={n: v["IPAddress"] for n, v in networks.items() if v.get("IPAddress")},
        ports=ports,
        resolv_conf=str(attrs.get("ResolvConfPath") or ""),
        hosts_file=str(attrs.get("HostsPath") or ""),
        engine=engine,
        addresses6={
            n: v["GlobalIPv6Address"] for n, v in networks.items() if v.get("GlobalIPv6Address")
        },
    )


def inspect_container(spec: str) -> ContainerNet:
    """Find a container by name or id; NotFoundError when there is none."""
    found = engines.connect()
    try:
        attrs = _engine_call(found.api.inspect_container, spec)
    except _EngineRefused as exc:
        if exc.status == 404:
            raise NotFoundError(
                f"no container named {spec!r} on {found.info.name} (an endpoint is a "
                "container, host, netns:NAME, pid:N or an IP address)"
                f"{engines.elsewhere_hint(spec)}"
            ) from None
        raise DockerUnavailableError(
            f"{found.info.name} refused to inspect {spec!r}: {exc}"
        ) from None
    return _from_attrs(attrs, found.info.name)


def running_containers() -> list[ContainerNet]:
    """Every running container, for naming the namespaces flowtrace finds.

    The connection is made once; an engine restarted since answers nothing for a
    moment, which is DockerUnavailableError like an engine that never answered.
    """
    found = engines.connect()
    api = found.api
    containers = []
    try:
        for listed in _engine_call(api.containers):
            try:
                attrs = _engine_call(api.inspect_container, listed["Id"])
            except _EngineRefused as exc:
                if exc.status != 404:  # one that went away since the list is left out
                    raise
                continue
            containers.append(_from_attrs(attrs, found.info.name))
    except _EngineRefused as exc:
        if exc.status == 0:
            raise DockerUnavailableError(
                f"the {found.info.name} engine stopped answering ({exc})"
            ) from None
        raise DockerUnavailableError(
            f"{found.info.name} refused to list containers: {exc}"
        ) from None
    return containers


def container_netns(spec: str) -> tuple[ContainerNet, str, list[str]]:
    """The namespace path of a running container, and plain notes about its network mode."""
    info = inspect_container(spec)
    engine = engines.used()
    if engine is not None and not engines.is_local(engine.host):
        # its pids are another machine's: /proc/PID here is some other process
        raise NoPathError(
            f"{info.name} runs on the engine at {engine.host} ({engine.selected_by}), on "
            "another machine: flowtrace enters the namespaces of this one; name it "
            f"{info.name}@HOST (HOST a Docker context or --host HOST=URL) to trace it "
            "through a helper on that host"
        )
    notes: list[str] = []
    mode = info.network_mode
    if mode.startswith("container:"):
        notes.append(_shared_namespace_note(info))
    if not info.running:
        raise NotRunningError(
            f"container {info.name} is {info.status}, not running: start it with "
            f"`{info.engine} start {info.name}`"
        )
    if mode == "none":
        added = _interfaces_besides_lo(f"/proc/{info.pid}/ns/net")
        if not added:
            raise NoPathError(
                f"container {info.name} has network mode none: {_engine_word(info)} gave its "
                "namespace no interface but lo, so no packet can leave it or reach it from "
                "another namespace"
            )
        notes.append(
            f"{info.name} has network mode none: {_engine_word(info)} gave it only lo, and "
            f"{', '.join(added)} was put into its namespace by something other than "
            f"{_engine_word(info)}"
        )
    if engine is not None and engine.rootless:
        notes.append(rootless_note(info.name, engine.name))
    if mode == "host":
        notes.append(
            f"{info.name} uses network mode host: it shares the {_engine_word(info)} host's "
            "network namespace, so the host's interfaces are its own and it has no veth of its own"
        )
    return info, f"/proc/{info.pid}/ns/net", notes


def _interfaces_besides_lo(path: str) -> list[str]:
    """Interface names in the namespace at path, other than lo (a none-mode container
    can still be given one from outside Docker, as a macvlan moved into it)."""
    import socket

    from flowtrace.endpoints.netns import run_in_netns

    names = run_in_netns(path, socket.if_nameindex)
    return sorted(name for _, name in names if name != "lo")


def _netns_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _shared_namespace_note(info: ContainerNet) -> str:
    """Container mode: the owner must run and still hold the namespace the sharer joined.

    When the owner stops, the sharer keeps the old namespace, which Docker has
    stripped down to lo; a restarted owner gets a new namespace the sharer is not in.
    """
    owner_ref = info.network_mode.split(":", 1)[1]
    lost = f"{info.name} is left with only lo"
    try:
        owner = inspect_container(owner_ref)
    except NotFoundError:
        raise NoPathError(
            f"{info.name}'s network belonged to container {owner_ref[:12]}, which no longer "
            f"exists: {lost}"
        ) from None
    if not owner.running:
        raise NoPathError(
            f"{info.name}'s network belonged to container {owner.name}, which is not running: "
            f"{lost}"
        )
    if info.running and _netns_of(info.pid) != _netns_of(owner.pid):
        raise NoPathError(
            f"{info.name}'s network belonged to container {owner.name}, which has restarted "
            f"with a new namespace since: {lost} (restart {info.name} to join {owner.name} again)"
        )
    if info.engine == "podman":  # a pod's member: the owner is the pod's infra container
        pod = _pod_of(info)
        if pod is not None and pod.infra_id == owner.id:
            return pod.owner_note(info.name)
    return (
        f"{info.name} uses network mode container:{owner.name}: it shares {owner.name}'s "
        "network namespace (interfaces, addresses, routes)"
    )


def container_facts(attrs: dict[str, Any]) -> ContainerNet:
    """What an engine's inspect attributes say about a container's networking (any engine's
    client: another host's too)."""
    return _from_attrs(attrs)


def _engine_word(info: ContainerNet) -> str:
    return "Podman" if info.engine == "podman" else "Docker"


def _pod_of(info: ContainerNet) -> PodFacts | None:
    return pod_of(engines.api(), info.id)


def rootless_note(container: str, engine: str) -> str:
    """What can be traced of a rootless engine's container, in one line."""
    return (
        f"{container} runs on rootless {engine.capitalize()}: flowtrace traces inside its "
        "namespace, and between containers on a rootless network inside the engine's "
        "rootless namespace; not past slirp4netns or pasta, the userspace processes that "
        "carry its traffic to and from the host, where there is no veth or bridge to watch"
    )
