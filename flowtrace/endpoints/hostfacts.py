"""What the agent finds out about the host it runs on: dockerd, its exec-root, its sandboxes.

Plain functions over /proc, standard library only: the agent calls host_facts() when it
starts, and the controller asks for the rest as calls (endpoints.helper), by name.
dockerd keeps the namespaces of overlay networks (EXEC_ROOT/netns/1-<network id>) as
bind mounts inside its own mount namespace, where no process of the host holds them;
/proc/DOCKERD_PID/root is that namespace's view of the files, so the agent opens them
there instead of entering dockerd's mounts (`nsenter -t PID -m`), which a process with
threads cannot do.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from typing import Any

#: ioctl(2) on a namespace file: which kind of namespace it is (Linux 4.11).
NS_GET_NSTYPE = 0xB703
CLONE_NEWNET = 0x40000000
#: Where dockerd keeps its namespaces when its command line names no --exec-root.
DEFAULT_EXEC_ROOT = "/var/run/docker"


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def engine_pids() -> list[int]:
    """The dockerd processes in this (the host's) network namespace."""
    own = os.stat("/proc/self/ns/net").st_ino
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or _read(f"/proc/{entry}/comm").strip() != "dockerd":
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == own:
                found.append(int(entry))
        except OSError:
            continue
    return sorted(found)


def exec_root_of(pid: int) -> str:
    """dockerd's --exec-root (its namespaces live under EXEC_ROOT/netns)."""
    args = _read(f"/proc/{pid}/cmdline").split("\0")
    for i, arg in enumerate(args):
        if arg == "--exec-root" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--exec-root="):
            return arg.split("=", 1)[1]
    return DEFAULT_EXEC_ROOT


def in_root(pid: int, path: str) -> str:
    """`path` as process `pid` sees it (its mount namespace, its root), as a path here.

    /proc/PID/root is that process's root; links along the way are followed inside it
    (an absolute link, like Debian's /var/run -> /run, starts again at that root)."""
    root = f"/proc/{pid}/root"
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    for _ in range(64):
        if not parts:
            break
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root + "/" + "/".join([*resolved, part])
        try:
            target = os.readlink(candidate)
        except OSError:
            resolved.append(part)
            continue
        pieces = [p for p in target.split("/") if p]
        parts = pieces + parts
        if target.startswith("/"):
            resolved = []
    return root + "/" + "/".join(resolved)


def host_facts() -> dict[str, Any]:
    """Who and where the agent is: the engine's process, its exec-root, the host."""
    pids = engine_pids()
    facts: dict[str, Any] = {
        "agent_pid": os.getpid(),
        "hostname": socket.gethostname(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "netns_inode": os.stat("/proc/self/ns/net").st_ino,
        "engine_pids": pids,
    }
    if pids:
        facts["exec_root"] = exec_root_of(pids[0])
    return facts


def sandboxes(pid: int, exec_root: str) -> list[tuple[str, str, int]]:
    """(name, path, inode) of each namespace under dockerd's EXEC_ROOT/netns: containers'
    sandboxes, and overlay networks' (1-<network id>), which exist only in its mounts."""
    folder = in_root(pid, exec_root.rstrip("/") + "/netns")
    found = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    for name in names:
        path = f"{folder}/{name}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            is_netns = fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
            inode = os.fstat(fd).st_ino
        except OSError:
            is_netns = False  # the empty file a namespace is mounted on, unmounted
        finally:
            os.close(fd)
        if is_netns:
            found.append((name, path, inode))
    return found


def inodes(paths: list[str]) -> list[int]:
    """The inode of each namespace file (0 where there is none)."""
    found = []
    for path in paths:
        try:
            found.append(os.stat(path).st_ino)
        except OSError:
            found.append(0)
    return found
