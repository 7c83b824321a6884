"""Paths as dockerd sees them: /proc/PID/root, its links followed inside that root."""

from __future__ import annotations

import os
from pathlib import Path

from flowtrace.endpoints.hostfacts import DEFAULT_EXEC_ROOT, exec_root_of, in_root, inodes


def test_links_are_followed_inside_the_process_root(tmp_path: Path) -> None:
    # Debian's /var/run -> /run, seen through this process's own root
    (tmp_path / "run" / "docker" / "netns").mkdir(parents=True)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to("../run")
    (tmp_path / "abs").symlink_to(tmp_path / "run")
    pid = os.getpid()
    root = f"/proc/{pid}/root"
    assert in_root(pid, f"{tmp_path}/var/run/docker/netns") == f"{root}{tmp_path}/run/docker/netns"
    assert in_root(pid, f"{tmp_path}/abs/docker") == f"{root}{tmp_path}/run/docker"
    assert os.path.isdir(in_root(pid, f"{tmp_path}/var/run/docker/netns"))


def test_the_exec_root_is_read_from_dockerds_command_line() -> None:
    assert exec_root_of(os.getpid()) == DEFAULT_EXEC_ROOT  # this process names none


def test_inodes_of_files_that_are_there_and_not() -> None:
    assert inodes(["/proc/self/ns/net", "/nonexistent"]) == [os.stat("/proc/self/ns/net").st_ino, 0]
