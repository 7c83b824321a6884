"""A call to an engine that answered before: a refusal keeps its HTTP status (404: no
such container, exit 5), a connection that breaks or times out is status 0."""

from __future__ import annotations

import pytest
import requests
from docker.errors import NotFound

from flowtrace.endpoints.docker import _engine_call, _EngineRefused


def _raise(exc: Exception) -> None:
    raise exc


def test_the_engines_refusals_keep_their_status() -> None:
    response = requests.Response()
    response.status_code = 404
    with pytest.raises(_EngineRefused) as refused:
        _engine_call(_raise, NotFound("No such container: x", response=response))
    assert refused.value.status == 404
    assert _engine_call(lambda a: a + "!", "x") == "x!"


def test_a_broken_or_frozen_connection_is_status_0() -> None:
    for exc in (requests.exceptions.ConnectionError("Connection refused"),
                requests.exceptions.ReadTimeout("Read timed out. (read timeout=10)")):  # fmt: skip
        with pytest.raises(_EngineRefused) as broken:
            _engine_call(_raise, exc)
        assert broken.value.status == 0 and "\n" not in str(broken.value)
