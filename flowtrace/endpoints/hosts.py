"""Other Docker hosts: `NAME@HOST` endpoints, `--host ALIAS=URL`, and the agents on them.

HOST is a Docker context (as `docker context ls` shows them: unix://, tcp:// with TLS,
ssh://) or an alias given with `--host ALIAS=URL` (a URL the Docker SDK takes, or a
socket's path).  Neither container names nor context names can hold `@`, so
`c2@hostb:80` is container c2 on hostb, port 80.  An endpoint without `@` is on the
current engine, as always.

`HostSet` connects a trace to the hosts it names, each once: the engine's client, the
helper container and its agent (endpoints.helper), the clock offset measured over that
agent's channel (correlate.clocks), and the agent attached to endpoints.netns, so
everything that reads a namespace "HOST:PATH" reads it there.  Leaving the set (its
`with` block, however it ends) removes every helper.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from flowtrace.correlate.clocks import ClockOffset, estimate
from flowtrace.endpoints.agent_image import check_architecture, keeps_agent_image
from flowtrace.endpoints.contexts import list_contexts, read_context
from flowtrace.endpoints.helper import HelperAgent
from flowtrace.endpoints.host_spec import HostSpec
from flowtrace.endpoints.netns import attach_host, detach_host, on_host
from flowtrace.errors import DockerUnavailableError, NotFoundError

#: Clock exchanges per host: of these the shortest round trip is kept.
CLOCK_EXCHANGES = 32
#: A test's way to make an agent's clock run ahead (ns): FLOWTRACE_AGENT_SKEW_NS=hostb=5000000.
SKEW_ENVIRONMENT = "FLOWTRACE_AGENT_SKEW_NS"
CLIENT_TIMEOUT_S = 30
#: Looking an address up among Docker contexts asks each engine this long at most.
ADDRESS_LOOKUP_TIMEOUT_S = 3


def context_spec(name: str) -> HostSpec | None:
    """The Docker context called `name`, as the docker CLI keeps it, or None."""
    found = read_context(name)
    if found is None:
        return None
    return HostSpec(name, found.host, found.tls, f"docker context {name}")


def skews(environ: Mapping[str, str]) -> dict[str, int]:
    """`hosta=5000000,hostb=-300000` -> per host, the skew its agent's clock is given."""
    found: dict[str, int] = {}
    for item in environ.get(SKEW_ENVIRONMENT, "").split(","):
        name, sep, value = item.partition("=")
        if sep and name.strip() and value.strip().lstrip("-").isdigit():
            found[name.strip()] = int(value)
    return found


@dataclass
class RemoteHost:
    """A connected host: its engine, its agent, what the agent found, its clock."""

    spec: HostSpec
    client: Any
    agent: HelperAgent
    engine: dict[str, Any]
    facts: dict[str, Any]
    offset: ClockOffset
    #: The engine's own words on its swarm role and address (for the manifest).
    swarm: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def engine_pid(self) -> int | None:
        pids = self.facts.get("engine_pids") or []
        return int(pids[0]) if pids else None

    @property
    def netns_path(self) -> str:
        """The host's own namespace, named for endpoints.netns."""
        pid = self.engine_pid
        return on_host(self.name, f"/proc/{pid}/ns/net" if pid else "/proc/self/ns/net")

    def describe(self) -> dict[str, Any]:
        """How the manifest and --json name the host and its engine."""
        return {
            "name": self.name,
            "url": self.spec.url,
            "selected_by": self.spec.selected_by,
            "engine": {
                "name": "docker",
                "version": self.engine.get("ServerVersion", ""),
                "id": self.engine.get("ID", ""),
                "hostname": self.engine.get("Name", ""),
                "os": self.engine.get("OperatingSystem", ""),
                "kernel": self.engine.get("KernelVersion", ""),
                "architecture": self.engine.get("Architecture", ""),
            },
            "swarm": self.swarm,
            "agent": {
                "image": self.agent.image,
                "image_imported": self.agent.image_imported,
                "container": self.agent.name,
                "exec_root": self.facts.get("exec_root"),
                "engine_pid": self.engine_pid,
            },
            "clock": self.offset.as_dict(),
        }


class HostSet:
    """The hosts one command names, connected on first use, all released at the end."""

    def __init__(self, aliases: Sequence[HostSpec] = (), environ: Mapping[str, str] | None = None):
        self.aliases = {spec.name: spec for spec in aliases}
        self._skews = skews(os.environ if environ is None else environ)
        self.hosts: dict[str, RemoteHost] = {}
        self._lock = threading.Lock()
        self._pending: dict[str, threading.Lock] = {}

    def spec(self, name: str) -> HostSpec:
        if name in self.aliases:
            return self.aliases[name]
        found = context_spec(name)
        if found is None:
            raise NotFoundError(
                f"no host named {name!r}: give it with --host {name}=URL or make a Docker "
                f"context of that name (`docker context create {name} --docker host=URL`)"
            )
        return found

    def known_names(self) -> list[str]:
        """Hosts named so far (connected or given with --host)."""
        return sorted({*self.aliases, *self.hosts})

    def connect(self, name: str) -> RemoteHost:
        """The host, connected (once): engine pinged, helper started, clock measured."""
        with self._lock:
            if name in self.hosts:
                return self.hosts[name]
            pending = self._pending.get(name)
            if pending is None:
                pending = self._pending[name] = threading.Lock()
        with pending:  # one connection per host, several hosts at once
            if name not in self.hosts:
                self.hosts[name] = _connect(self.spec(name), self._skews.get(name, 0))
            return self.hosts[name]

    def connect_all(self, names: Sequence[str]) -> None:
        """Connect several hosts side by side (each helper starts in ~0.5 s)."""
        names = [n for n in dict.fromkeys(names) if n not in self.hosts]
        if len(names) < 2:
            for name in names:
                self.connect(name)
            return
        failures: list[BaseException] = []

        def one(name: str) -> None:
            try:
                self.connect(name)
            except BaseException as exc:  # raised below
                failures.append(exc)

        threads = [threading.Thread(target=one, args=(n,), name=f"connect {n}") for n in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]

    def find_by_address(self, ip: str) -> str | None:
        """A Docker context, not named yet, whose engine is a swarm node at `ip` (asked
        through the engine's API only: nothing is started there), else None."""
        for context in list_contexts():
            name = context.name
            if name in self.known_names():
                continue
            spec = HostSpec(name, context.host, context.tls, f"docker context {name}")
            try:
                client, info = _client(spec, timeout=ADDRESS_LOOKUP_TIMEOUT_S)
            except DockerUnavailableError:
                continue
            client.close()
            if (info.get("Swarm") or {}).get("NodeAddr") == ip:
                self.aliases.setdefault(name, spec)
                return name
        return None

    def close(self) -> None:
        """Remove every helper and close every client, side by side (never raises)."""

        def release(host: RemoteHost) -> None:
            detach_host(host.name)
            host.agent.close()
            with contextlib.suppress(Exception):
                host.client.close()

        closers = [threading.Thread(target=release, args=(h,)) for h in self.hosts.values()]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join()
        self.hosts.clear()

    def __enter__(self) -> HostSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _client(spec: HostSpec, timeout: float = CLIENT_TIMEOUT_S) -> tuple[Any, dict[str, Any]]:
    import docker
    from docker.errors import DockerException

    try:
        client = docker.DockerClient(
            base_url=spec.url, tls=spec.tls, timeout=timeout, use_ssh_client=True
        )
        info = client.info()
    except (DockerException, OSError) as exc:
        text = str(exc).strip().splitlines()
        raise DockerUnavailableError(
            f"host {spec.name}'s engine does not answer at {spec.url} ({spec.selected_by}): "
            f"{(text[0] if text else type(exc).__name__)[:160]}"
        ) from None
    return client, info


def measure_clock(agent: HelperAgent, exchanges: int = CLOCK_EXCHANGES) -> ClockOffset:
    """The agent's clock against this one, over its own channel (correlate.clocks)."""
    samples = []
    for _ in range(exchanges):
        s = agent.clock_sample()
        samples.append((s.t1, s.t2, s.t3, s.t4))
    return estimate(samples)


def _connect(spec: HostSpec, skew_ns: int) -> RemoteHost:
    client, info = _client(spec)
    try:
        check_architecture(info, spec.name)
        agent = HelperAgent(
            spec.name,
            client,
            local_socket=spec.local_socket,
            skew_ns=skew_ns,
            keep_image=keeps_agent_image(info),
        )
        facts = agent.start()
    except BaseException:
        client.close()
        raise
    try:
        offset = measure_clock(agent)
        swarm = info.get("Swarm") or {}
        host = RemoteHost(
            spec,
            client,
            agent,
            info,
            facts,
            offset,
            {k: swarm.get(k) for k in ("NodeID", "NodeAddr", "LocalNodeState", "ControlAvailable")},
        )
    except BaseException:
        agent.close()
        client.close()
        raise
    attach_host(spec.name, agent)
    return host


@contextlib.contextmanager
def connected(aliases: Sequence[HostSpec] = ()) -> Iterator[HostSet]:
    """A HostSet for the length of a block."""
    hosts = HostSet(aliases)
    try:
        yield hosts
    finally:
        hosts.close()
