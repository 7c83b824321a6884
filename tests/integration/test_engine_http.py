"""The engine reads a trace makes over the engine's socket, against the Docker SDK's."""

from __future__ import annotations

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
