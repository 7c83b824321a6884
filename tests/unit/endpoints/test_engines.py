"""Choosing the engine as the docker CLI does, and telling engines apart by their answers
(recorded from Docker 20.10 and Podman 4.3.1 here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flowtrace.endpoints.engines import (
    DOCKER_SOCKET,
    FLOWTRACE_PODMAN_SOCKET,
    PODMAN_SOCKET,
    Candidate,
    EngineChoice,
    EngineInfo,
    candidates,
    current_choice,
    identify,
    identify_ping,
    is_local,
    is_rootless,
    using,
)
from flowtrace.errors import ExitStatus, FlowtraceError

DATA = Path(__file__).resolve().parents[2] / "data" / "engines"
CONTEXTS = {"lab": ("ssh://lab.example", None), "podman": ("unix:///run/podman/podman.sock", None)}


def plan(choice: EngineChoice, env: dict[str, str] | None = None, current: str | None = None,
         podman: bool = True) -> list[Candidate]:  # fmt: skip
    return candidates(choice, env or {}, current, CONTEXTS.get, podman)


def hosts(found: list[Candidate]) -> list[str]:
    return [c.host or "(start Podman's API)" for c in found]


def test_no_choice_asks_dockers_socket_then_podman() -> None:
    found = plan(EngineChoice())
    assert hosts(found) == [
        DOCKER_SOCKET,
        PODMAN_SOCKET,
        FLOWTRACE_PODMAN_SOCKET,
        "(start Podman's API)",
    ]
    assert not any(c.explicit for c in found)
    assert found[0].selected_by == "Docker's default socket"
    assert [c.expect for c in found] == [None, "podman", "podman", "podman"]
    assert hosts(plan(EngineChoice(), podman=False)) == [
        DOCKER_SOCKET, PODMAN_SOCKET, FLOWTRACE_PODMAN_SOCKET,
    ]  # fmt: skip


def test_the_docker_clis_order_context_flag_host_context_variable_current() -> None:
    env = {"DOCKER_HOST": "tcp://10.0.0.1:2375", "DOCKER_CONTEXT": "podman"}
    assert plan(EngineChoice(context="lab"), env)[0].host == "ssh://lab.example"
    first = plan(EngineChoice(), env)
    assert len(first) == 1 and first[0].host == "tcp://10.0.0.1:2375" and first[0].explicit
    named = plan(EngineChoice(), {"DOCKER_CONTEXT": "podman"}, current="lab")
    assert (named[0].host, named[0].selected_by) == (
        "unix:///run/podman/podman.sock", "DOCKER_CONTEXT=podman"
    )  # fmt: skip
    current = plan(EngineChoice(), current="lab")
    assert current[0].selected_by == "docker context lab (current)"
    assert (
        plan(EngineChoice(), {"DOCKER_CONTEXT": "default"}, current="lab")[0].host == DOCKER_SOCKET
    )


def test_engine_docker_never_falls_back_to_podman() -> None:
    found = plan(EngineChoice("docker"))
    assert hosts(found) == [DOCKER_SOCKET] and found[0].expect == "docker"
    assert plan(EngineChoice("docker"), {"DOCKER_HOST": "unix:///x"})[0].expect == "docker"


def test_engine_podman_asks_podmans_sockets_and_may_start_its_api() -> None:
    found = plan(EngineChoice("podman"), {"DOCKER_HOST": "unix:///var/run/docker.sock"})
    assert hosts(found) == [PODMAN_SOCKET, FLOWTRACE_PODMAN_SOCKET, "(start Podman's API)"]
    assert found[-1].start_podman and all(c.expect == "podman" for c in found)
    remote = plan(EngineChoice("podman"), {"CONTAINER_HOST": "unix:///run/user/1000/podman.sock"})
    assert len(remote) == 1 and remote[0].explicit
    assert remote[0].selected_by == "CONTAINER_HOST (--engine podman)"


def test_unknown_engines_and_contexts_are_clear_errors() -> None:
    with pytest.raises(FlowtraceError) as bad:
        plan(EngineChoice("lxc"))
    assert bad.value.status == ExitStatus.USAGE
    with pytest.raises(FlowtraceError, match="no Docker context named 'nosuch'") as missing:
        plan(EngineChoice(context="nosuch"))
    assert missing.value.status == ExitStatus.NOT_FOUND


def recorded(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def test_engines_told_apart_by_their_version_and_ping() -> None:
    assert identify(recorded("docker-20.10-version.json")) == ("docker", "20.10.24+dfsg1", "1.41")
    assert identify(recorded("podman-4.3-version.json")) == ("podman", "4.3.1", "1.41")
    podman_ping = {
        "Api-Version": "1.41",
        "Libpod-Api-Version": "4.3.1",
        "Server": "Libpod/4.3.1 (linux)",
    }
    assert identify_ping(podman_ping) == ("podman", "4.3.1", "1.41")
    docker_ping = {"Api-Version": "1.41", "Server": "Docker/20.10.24+dfsg1 (linux)"}
    assert identify_ping(docker_ping) == ("docker", "20.10.24+dfsg1", "1.41")
    assert identify_ping({"Api-Version": "1.41"}) is None


def test_rootless_from_security_options_or_podmans_info() -> None:
    assert is_rootless({"SecurityOptions": ["name=seccomp,profile=default", "name=rootless"]})
    assert not is_rootless({"SecurityOptions": ["name=seccomp,profile=default"]})
    assert not is_rootless(recorded("podman-4.3-libpod-info.json"))
    assert is_rootless({"host": {"security": {"rootless": True}}})


def test_an_engines_one_line_for_a_header_and_its_manifest_entry() -> None:
    podman = EngineInfo("podman", "4.3.1", "1.41", "unix:///run/podman/podman.sock",
                        "--engine podman", False, "netavark")  # fmt: skip
    assert podman.describe() == (
        "podman 4.3.1 (rootful, netavark) at unix:///run/podman/podman.sock (--engine podman)"
    )
    started = EngineInfo("podman", "4.3.1", host="unix:///run/flowtrace/podman-9.sock",
                         selected_by="--engine podman", service_pid=10)  # fmt: skip
    assert started.describe() == (
        "podman 4.3.1 (rootful) (--engine podman; flowtrace started its API for this run, pid 10)"
    )
    entry = started.as_dict()
    assert entry["service_started_by_flowtrace"] is True and entry["service_pid"] == 10
    assert entry["summary"] == started.describe()


def test_using_a_choice_and_an_empty_one_keeps_the_current() -> None:
    with using(EngineChoice("podman")):
        assert current_choice() == EngineChoice("podman")
        with using(EngineChoice()):
            assert current_choice() == EngineChoice("podman")
    assert current_choice() == EngineChoice()


def test_local_engines_are_unix_sockets_or_loopback() -> None:
    assert is_local("unix:///var/run/docker.sock") and is_local("tcp://127.0.0.1:2375")
    assert is_local("tcp://[::1]:2375") and is_local("http+unix:///run/podman/podman.sock")
    assert not is_local("ssh://lab.example") and not is_local("tcp://10.0.0.1:2376")


def test_a_frozen_engine_is_one_line_after_its_timeout_and_not_asked_again(
    tmp_path: Path,
) -> None:
    """A socket that accepts and never answers (a frozen dockerd): one error after the
    timeout, and the next ask in this process fails at once."""
    import socket
    import time

    from flowtrace.endpoints import engines
    from flowtrace.errors import DockerUnavailableError

    path = tmp_path / "frozen.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    candidate = Candidate(f"unix://{path}", "DOCKER_HOST", explicit=True)
    try:
        started = time.monotonic()
        with pytest.raises(DockerUnavailableError) as first:
            engines._try(candidate, 0.5, [])
        assert 0.4 < time.monotonic() - started < 5
        assert "did not answer within 0.5 s (frozen or overloaded?)" in first.value.message
        assert first.value.status == ExitStatus.NO_DOCKER and "\n" not in first.value.message
        started = time.monotonic()
        with pytest.raises(DockerUnavailableError) as again:
            engines._try(candidate, 10, [])
        assert time.monotonic() - started < 0.2 and again.value is first.value
        tried: list[str] = []
        quiet = Candidate(f"unix://{path}", "Docker's default socket")
        assert engines._try(quiet, 10, tried) is None and "did not answer in time" in tried[0]
    finally:
        server.close()
        engines.close()
