"""A call to an engine that answered before: its answers pass through, a connection that
breaks or times out is one line."""

from __future__ import annotations

import pytest
import requests
from docker.errors import APIError, NotFound

from flowtrace.endpoints.docker import _engine_call
from flowtrace.errors import DockerUnavailableError, ExitStatus


def _raise(exc: Exception) -> None:
    raise exc


def test_the_engines_own_answers_pass_through() -> None:
    with pytest.raises(NotFound):  # an HTTPError of requests too: still the engine's word
        _engine_call(_raise, NotFound("No such container: x"))
    with pytest.raises(APIError):
        _engine_call(_raise, APIError("conflict"))
    assert _engine_call(lambda a: a + 1, 1) == 2


def test_a_broken_or_frozen_connection_is_one_line() -> None:
    with pytest.raises(DockerUnavailableError) as gone:
        _engine_call(_raise, requests.exceptions.ConnectionError("Connection refused"))
    assert gone.value.status == ExitStatus.NO_DOCKER
    assert "went away (Connection refused)" in gone.value.message
    with pytest.raises(DockerUnavailableError) as frozen:
        _engine_call(_raise, requests.exceptions.ReadTimeout("Read timed out. (read timeout=10)"))
    assert "stopped answering" in frozen.value.message and "\n" not in frozen.value.message
