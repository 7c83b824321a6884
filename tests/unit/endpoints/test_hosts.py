"""Naming other hosts: NAME@HOST, --host ALIAS=URL, Docker contexts, the clock-skew knob."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowtrace.endpoints.contexts import write_context
from flowtrace.endpoints.host_spec import parse_host_option, split_host
from flowtrace.endpoints.hosts import HostSet, skews
from flowtrace.errors import ExitStatus, FlowtraceError, NotFoundError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("c2@hostb", ("c2", "hostb")),
        ("host@hostb", ("host", "hostb")),
        ("netns:lab@hostb", ("netns:lab", "hostb")),
        ("pid:42@host-b.lab", ("pid:42", "host-b.lab")),
        ("c2", ("c2", None)),
        ("203.0.113.2", ("203.0.113.2", None)),
    ],
)
def test_an_endpoint_names_its_host_after_the_at(
    spec: str, expected: tuple[str, str | None]
) -> None:
    assert split_host(spec) == expected


@pytest.mark.parametrize("spec", ["c2@", "@hostb", "c2@host/b", "c2@-x"])
def test_a_bad_host_is_a_usage_error(spec: str) -> None:
    with pytest.raises(FlowtraceError) as caught:
        split_host(spec)
    assert caught.value.status == ExitStatus.USAGE


def test_host_options_take_urls_and_socket_paths() -> None:
    assert parse_host_option("hostb=/run/b/docker.sock").url == "unix:///run/b/docker.sock"
    spec = parse_host_option(" hostb = tcp://198.18.20.3:2376 ")
    assert (spec.name, spec.url, spec.local_socket) == ("hostb", "tcp://198.18.20.3:2376", False)
    assert parse_host_option("b=ssh://root@b").selected_by == "--host b=ssh://root@b"
    for bad in ("hostb", "=unix:///x", "hostb=", "host@b=unix:///x", "hostb=ftp://x"):
        with pytest.raises(FlowtraceError) as caught:
            parse_host_option(bad)
        assert caught.value.status == ExitStatus.USAGE


def test_a_docker_context_names_a_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    write_context("hostb", "unix:///run/b/docker.sock", "a test host")
    hosts = HostSet([parse_host_option("hosta=/run/a/docker.sock")], environ={})
    assert hosts.spec("hostb").url == "unix:///run/b/docker.sock"
    assert hosts.spec("hostb").selected_by == "docker context hostb"
    assert hosts.spec("hosta").selected_by == "--host hosta=unix:///run/a/docker.sock"
    assert hosts.known_names() == ["hosta"]
    with pytest.raises(NotFoundError, match="--host nosuch=URL"):
        hosts.spec("nosuch")
    with pytest.raises(NotFoundError):
        hosts.spec("default")  # the current engine, not another host


def test_a_test_can_give_an_agent_a_skewed_clock() -> None:
    found = skews({"FLOWTRACE_AGENT_SKEW_NS": "hosta=5000000, hostb=-300000,bad,x=y"})
    assert found == {"hosta": 5_000_000, "hostb": -300_000}
    assert skews({}) == {}
