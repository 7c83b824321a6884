"""Entering network namespaces: the only module that calls setns(2).

setns(CLONE_NEWNET) changes the calling *thread* only, and a socket keeps the
namespace it was created in.  So every call runs in a short-lived thread that
enters the namespace, does its work (open a socket, ask netlink) and ends; the
caller's own namespace never changes.  No fork.

A namespace on another host is named "HOST:PATH" (model.split_host): a function run in
it runs on that host, in flowtrace's agent there (endpoints.helper), which a
connected host attaches here for as long as it is connected; the function is sent by
its module and name, so it must be a module-level function (paths of that host among
its arguments are given as the host's own).  That registry of connected hosts is this
module's one piece of state.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from flowtrace.errors import FlowtraceError, NotFoundError, NotRootError
from flowtrace.model import split_host

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
#: The namespace flowtrace was started in (the main thread never leaves it); on a Docker
#: host that is the host namespace.  /proc/1 may be unreadable inside sandboxes.
HOST_NETNS = "/proc/self/ns/net"

_libc = ctypes.CDLL(None, use_errno=True)


class HostRunner(Protocol):
    """What runs functions on another host (the agent there)."""

    def call(self, netns_path: str | None, func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """func(*args) on the host, in the namespace at netns_path there (None: as the agent
        runs); the agent's exceptions are raised here."""
        ...


_hosts: dict[str, HostRunner] = {}


def attach_host(name: str, runner: HostRunner) -> None:
    """Run what is asked of namespaces "NAME:PATH" through `runner` from now on."""
    _hosts[name] = runner


def detach_host(name: str) -> None:
    _hosts.pop(name, None)


def host_runner(name: str) -> HostRunner:
    try:
        return _hosts[name]
    except KeyError:
        raise FlowtraceError(
            f"host {name} is not connected: name it in an endpoint (NAME@{name}) or with "
            f"--host {name}=URL"
        ) from None


def on_host(host: str, path: str) -> str:
    """The name of a namespace path of `host` as this process uses it ("hostb:/proc/...")."""
    return f"{host}:{path}"


def _localised(host: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Paths of `host` among the arguments (and in lists of them), as that host names them."""
    prefix = f"{host}:/"

    def local(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(prefix):
            return value[len(host) + 1 :]
        if isinstance(value, list | tuple):
            return type(value)(local(item) for item in value)
        return value

    return tuple(local(a) for a in args)


def netns_inode(path: str) -> int:
    """Identity of a namespace: two paths name the same one when inodes match."""
    host, local = split_host(path)
    if host is not None:
        return int(host_runner(host).call(None, netns_inode, (local,)))
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


def run_where(path: str, func: Callable[..., T], *args: object) -> T:
    """Call func(*args) on the host `path` is on, without entering a namespace (for work
    that enters several itself: one call to another host instead of many)."""
    host, _ = split_host(path)
    if host is None:
        return func(*args)
    value: T = host_runner(host).call(None, func, _localised(host, args))
    return value


def run_in_netns(path: str, func: Callable[..., T], *args: object) -> T:
    """Call func(*args) in a thread that has entered the namespace at `path` (on the host
    the path names)."""
    host, local = split_host(path)
    if host is not None:
        value: T = host_runner(host).call(local, func, _localised(host, args))
        return value
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
