"""The engine reads a trace makes over the engine's socket (Docker's, Podman's, a
context's), against the Docker SDK's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker
import pytest

from flowtrace.endpoints import docker as engine
from flowtrace.endpoints.engine_http import DEFAULT_HOST, EngineAPI, EngineError
from flowtrace.errors import NotFoundError
from flowtrace.lab import LabState


def test_inspect_and_list_say_what_the_sdk_says(lab: LabState) -> None:
    sdk = docker.from_env()
    try:
        api = EngineAPI(DEFAULT_HOST)
        assert api.ping()
        ours = api.inspect_container("c1")
        theirs = sdk.api.inspect_container("c1")
        for key in ("Id", "Name", "State", "NetworkSettings", "HostConfig", "ResolvConfPath"):
            assert ours[key] == theirs[key]
        assert {c["Id"] for c in api.containers()} >= {ours["Id"]}
    finally:
        sdk.close()
    # and what flowtrace builds from it
    c1 = engine.inspect_container("c1")
    assert c1.name == "c1" and c1.running and c1.pid > 0
    assert c1.addresses == {
        n: v["IPAddress"] for n, v in theirs["NetworkSettings"]["Networks"].items()
    }


def test_a_missing_container_is_not_found(lab: LabState) -> None:
    with pytest.raises(EngineError) as raised:
        EngineAPI(DEFAULT_HOST).inspect_container("ft-speed-no-such-container")
    assert raised.value.status == 404
    with pytest.raises(NotFoundError, match="no container named 'ft-speed-no-such-container'"):
        engine.inspect_container("ft-speed-no-such-container")


def test_an_engine_that_does_not_answer_is_status_0(tmp_path: object) -> None:
    with pytest.raises(EngineError) as raised:
        EngineAPI("unix:///run/ft-speed-nothing-here.sock", timeout=1).ping()
    assert raised.value.status == 0


CONNECT_AND_READ = """
import json, sys
from flowtrace.endpoints import engines
from flowtrace.endpoints.engines import EngineChoice
with engines.using(EngineChoice(*(a or None for a in sys.argv[1:3]))):
    found = engines.connect()
    names = sorted(c["Names"][0].lstrip("/") for c in found.api.containers())
    print(json.dumps({"engine": found.info.name, "selected_by": found.info.selected_by,
                      "names": names, "reader": type(found.api).__name__,
                      "sdk": "docker" in sys.modules}))
    engines.close()
"""


def connect_in_a_fresh_process(env: dict[str, str], *choice: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CONNECT_AND_READ, *choice],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return dict(json.loads(done.stdout))


def test_each_engine_is_read_on_its_socket_with_no_sdk(
    lab: LabState, podman_api: dict[str, str], tmp_path: Path
) -> None:
    from docker.context import ContextAPI

    env = {k: v for k, v in podman_api.items() if k != "CONTAINER_HOST"}
    docker_side = connect_in_a_fresh_process(env, "", "")
    assert (docker_side["engine"], docker_side["reader"], docker_side["sdk"]) == (
        "docker", "EngineAPI", False,
    )  # fmt: skip
    assert "c1" in docker_side["names"]
    podman_side = connect_in_a_fresh_process(podman_api, "podman", "")
    assert (podman_side["engine"], podman_side["reader"], podman_side["sdk"]) == (
        "podman", "EngineAPI", False,
    )  # fmt: skip
    # a context of the docker CLI's naming Podman's socket, read from its meta.json
    config = tmp_path / "docker-config"
    config.mkdir()
    (config / "config.json").write_text("{}")
    os.environ["DOCKER_CONFIG"] = str(config)
    try:
        ContextAPI.create_context("ftspeed-podman", host=podman_api["CONTAINER_HOST"])
    finally:
        del os.environ["DOCKER_CONFIG"]
    via_context = connect_in_a_fresh_process(
        {**env, "DOCKER_CONFIG": str(config)}, "", "ftspeed-podman"
    )
    assert via_context["selected_by"] == "--context ftspeed-podman"
    assert (via_context["engine"], via_context["sdk"]) == ("podman", False)
    assert via_context["names"] == podman_side["names"]
