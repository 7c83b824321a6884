"""One scenario's text: published bindings read as Docker prints them."""

from __future__ import annotations

from flowtrace.lab.scenarios import split_binding


def test_bindings_read_as_docker_prints_them() -> None:
    assert split_binding("0.0.0.0:49153->80/tcp") == ("0.0.0.0", 49153, "80/tcp")
    assert split_binding("[::]:8080->80/tcp") == ("::", 8080, "80/tcp")
