"""Entering network namespaces: the only module that calls setns(2).

setns(CLONE_NEWNET) changes the calling *thread* only, and a socket keeps the
namespace it was created in.  So every call runs in a short-lived thread that
enters the namespace, does its work (open a socket, ask netlink) and ends; the
caller's own namespace never changes.  No fork, no global state.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from flowtrace.errors import NotFoundError, NotRootError

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
#: The namespace flowtrace was started in (the main thread never leaves it); on a Docker
#: host that is the host namespace.  /proc/1 may be unreadable inside sandboxes.
HOST_NETNS = "/proc/self/ns/net"

_libc = ctypes.CDLL(None, use_errno=True)


def netns_inode(path: str) -> int:
    """Identity of a namespace: two paths name the same one when inodes match."""
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        raise NotFoundError(f"network namespace {path} does not exist") from None
    except PermissionError:
        raise NotRootError(f"cannot open {path}: run flowtrace as root") from None


def _enter(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"network namespace {path} is gone") from None
    except PermissionError:
        raise NotRootError(f"cannot open {path}: run flowtrace as root") from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            if err == 1:  # EPERM
                raise NotRootError(f"cannot enter {path}: run flowtrace as root")
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def enter_netns(path: str) -> None:
    """Move the calling thread into the network namespace at `path` (the thread only)."""
    _enter(path)


def run_in_netns(path: str, func: Callable[..., T], *args: object) -> T:
    """Call func(*args) in a thread that has entered the namespace at `path`."""
    if netns_inode(path) == netns_inode("/proc/self/ns/net"):
        return func(*args)
    box: dict[str, object] = {}

    def body() -> None:
        try:
            _enter(path)
            box["value"] = func(*args)
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=body, name=f"netns:{path}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
