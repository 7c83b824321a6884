"""The engine line under a trace's or lookup's title."""

from __future__ import annotations

from flowtrace.output.terminal import engine_line


def test_the_engine_that_named_the_containers_under_the_title() -> None:
    meta = {"engine": {"name": "podman", "version": "4.3.1", "summary": "podman 4.3.1 (rootful)"}}
    assert engine_line(meta) == "engine: podman 4.3.1 (rootful)"
    assert engine_line({"engine": {"name": "docker", "version": "20.10.24"}}) == (
        "engine: docker 20.10.24"
    )
    assert engine_line({"engine": None}) is None  # no engine was asked (netns:, pid:, host)
    assert engine_line({}) is None
