"""A namespace on another host is asked of that host's runner, its paths as the host names them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from flowtrace.endpoints.netns import attach_host, detach_host, netns_inode, run_in_netns, run_where
from flowtrace.errors import FlowtraceError


class Recorder:
    """A HostRunner that records what it is asked and answers with the function's name."""

    def __init__(self) -> None:
        self.asked: list[tuple[str | None, str, tuple[Any, ...]]] = []

    def call(self, netns_path: str | None, func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        self.asked.append((netns_path, func.__qualname__, args))
        return 4026532001 if func is netns_inode else func.__qualname__


def test_calls_for_another_host_go_to_its_runner_with_its_own_paths() -> None:
    runner = Recorder()
    attach_host("hostb", runner)
    try:
        assert run_in_netns("hostb:/proc/9/ns/net", len, "hostb:/proc/10/ns/net", "x") == "len"
        assert run_where("hostb:/proc/9/ns/net", sorted, ["hostb:/a", "hostb:/b", "/c"]) == "sorted"
        assert netns_inode("hostb:/proc/9/ns/net") == 4026532001
    finally:
        detach_host("hostb")
    assert runner.asked == [
        ("/proc/9/ns/net", "len", ("/proc/10/ns/net", "x")),
        (None, "sorted", (["/a", "/b", "/c"],)),
        (None, "netns_inode", ("/proc/9/ns/net",)),
    ]


def test_a_host_not_connected_is_a_clear_error() -> None:
    with pytest.raises(FlowtraceError, match="host hostz is not connected"):
        run_in_netns("hostz:/proc/9/ns/net", len, "x")


def test_local_calls_stay_here() -> None:
    assert run_where("/proc/self/ns/net", sorted, [2, 1]) == [1, 2]
