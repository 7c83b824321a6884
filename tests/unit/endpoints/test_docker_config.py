"""The docker CLI's config and contexts, read as JSON (no Docker SDK on a trace), say
what the Docker SDK's own readers say."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from docker.context import ContextAPI
from docker.context.config import get_current_context_name

from flowtrace.endpoints import docker_config as engines


def write_context(config: Path, name: str, host: str, **docker: object) -> Path:
    """A context as `docker context create NAME --docker host=HOST` leaves it."""
    key = hashlib.sha256(name.encode()).hexdigest()
    meta = config / "contexts" / "meta" / key
    meta.mkdir(parents=True)
    endpoint = {"Host": host, "SkipTLSVerify": False, **docker}
    (meta / "meta.json").write_text(
        json.dumps({"Name": name, "Metadata": {}, "Endpoints": {"docker": endpoint}})
    )
    return config / "contexts" / "tls" / key


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def sdk_context(name: str) -> tuple[str, object] | None:
    ctx = ContextAPI.get_context(name)
    return None if ctx is None else (ctx.Host or "", ctx.TLSConfig)


def test_the_current_context_as_the_sdk_reads_it(config: Path) -> None:
    assert engines.current_context_name() == get_current_context_name() == "default"
    (config / "config.json").write_text(json.dumps({"currentContext": "podman"}))
    assert engines.current_context_name() == get_current_context_name() == "podman"
    (config / "config.json").write_text("{not json")
    assert engines.current_context_name() == get_current_context_name() == "default"
    (config / "config.json").write_text(json.dumps({"auths": {}}))
    assert engines.current_context_name() == get_current_context_name() == "default"


def test_a_contexts_host_as_the_sdk_reads_it(config: Path) -> None:
    (config / "config.json").write_text("{}")  # the SDK looks for contexts beside it
    write_context(config, "podman", "unix:///run/podman/podman.sock")
    write_context(config, "far", "tcp://198.51.100.7:2375")
    for name in ("podman", "far", "nosuch"):
        assert engines.docker_context(name) == sdk_context(name), name
    assert engines.docker_context("podman") == ("unix:///run/podman/podman.sock", None)
    assert engines.docker_context("nosuch") is None
    assert engines.docker_context("default") == (engines.DOCKER_SOCKET, None)


def test_contexts_are_found_with_no_config_file_as_the_docker_cli_finds_them(
    config: Path,
) -> None:
    write_context(config, "podman", "unix:///run/podman/podman.sock")
    assert engines.docker_context("podman") == ("unix:///run/podman/podman.sock", None)


def test_a_context_with_tls_material_is_read_by_the_sdk(config: Path) -> None:
    (config / "config.json").write_text("{}")
    tls = write_context(config, "secure", "tcp://198.51.100.7:2376")
    (tls / "docker").mkdir(parents=True)
    for part in ("ca.pem", "cert.pem", "key.pem"):
        (tls / "docker" / part).write_text("")
    found = engines.docker_context("secure")
    assert found is not None and found[0] == "tcp://198.51.100.7:2376"
    assert found[1] is not None  # the SDK's TLSConfig: the engine is then asked through it
