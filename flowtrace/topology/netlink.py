"""Netlink requests on a plain socket, encoded and decoded by pyroute2's message classes.

Why not pyroute2's IPRoute: `import pyroute2` runs the package's __init__, which loads
every netlink family pyroute2 knows (IPDB, NDB, nftables, wireguard, nl80211...), and
IPRoute itself brings asyncio and one event loop per socket: 0.19 s of a 0.6 s ping on
the 2-core VM, for four small requests.  So the socket loop is ours (open, send one
request, receive until the answer or NLMSG_DONE: the lines below) and everything
about the messages (layouts, attributes, nested link info, netlink errors) stays
pyroute2's: its message classes and its Marshal, imported without the package's
__init__ (`lean_pyroute2`), 0.05 s.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
from typing import Any

NETLINK_ROUTE = 0
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTM_NEWNSID, RTM_GETNSID = 88, 90
_RECV_BYTES = 1 << 16
#: IFLA_EXT_MASK: leave the per-link statistics out of a link dump (flowtrace reads none).
RTEXT_FILTER_SKIP_STATS = 1 << 3

_lean_lock = threading.Lock()


def lean_pyroute2() -> None:
    """Let `import pyroute2.x.y` load x.y and what it imports, not pyroute2's __init__.

    The package module is made from its spec without running its body; the names the
    body would define (`from pyroute2 import IPRoute`, as the lab writes) run it on
    first use, so code that wants all of pyroute2 still gets it.  A pyroute2 already
    imported whole is left as it is.
    """
    with _lean_lock:
        if "pyroute2" in sys.modules:
            return
        spec = importlib.util.find_spec("pyroute2")
        if spec is None or spec.loader is None:
            raise ImportError("pyroute2 is not installed")
        package = importlib.util.module_from_spec(spec)
        loader = spec.loader

        def whole_package(name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            if importlib.util.find_spec(f"pyroute2.{name}") is not None:
                return importlib.import_module(f"pyroute2.{name}")
            with _lean_lock:
                if "__getattr__" in package.__dict__:
                    del package.__dict__["__getattr__"]
                    loader.exec_module(package)
            return getattr(package, name)

        package.__getattr__ = whole_package  # type: ignore[method-assign]
        sys.modules["pyroute2"] = package


def _message_classes() -> dict[int, type]:
    lean_pyroute2()
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.nsidmsg import nsidmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    return {
        RTM_NEWLINK: ifinfmsg,
        RTM_GETLINK: ifinfmsg,
        RTM_NEWADDR: ifaddrmsg,
        RTM_GETADDR: ifaddrmsg,
        RTM_NEWROUTE: rtmsg,
        RTM_GETROUTE: rtmsg,
        RTM_NEWNSID: nsidmsg,
        RTM_GETNSID: nsidmsg,
    }


def netlink_error() -> type[Exception]:
    """pyroute2's NetlinkError (its `.code` is the errno), which requests raise."""
    lean_pyroute2()
    from pyroute2.netlink.exceptions import NetlinkError

    error: type[Exception] = NetlinkError
    return error


class RouteSocket:
    """One NETLINK_ROUTE socket in the calling thread's namespace; one request at a time."""

    def __init__(self) -> None:
        self._classes = _message_classes()
        lean_pyroute2()
        from pyroute2.netlink.marshal import Marshal

        self._marshal = Marshal()
        self._marshal.msg_map = dict(self._classes)
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._seq = 0

    def request(
        self, msg_type: int, fields: dict[str, Any], attrs: list[tuple[str, Any]], dump: bool
    ) -> list[Any]:
        """Send one request and return the decoded answers (every message of a dump)."""
        msg = self._classes[msg_type]()
        for key, value in fields.items():
            msg[key] = value
        msg["attrs"] = [list(a) for a in attrs]
        self._seq += 1
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
        msg["header"]["sequence_number"] = self._seq
        msg["header"]["pid"] = 0
        msg.encode()
        self._sock.send(msg.data)
        answers: list[Any] = []
        while True:
            data = self._sock.recv(_RECV_BYTES)
            for reply in self._marshal.parse(data):
                if reply["header"]["sequence_number"] != self._seq:
                    continue
                error = reply["header"].get("error")
                if error is not None:
                    raise error
                kind = reply["header"]["type"]
                if kind in (NLMSG_DONE, NLMSG_ERROR):
                    return answers  # the end of a dump, or an acknowledgement
                answers.append(reply)
                if not dump:
                    return answers

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RouteSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def links(rs: RouteSocket) -> list[Any]:
    mask = [("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS)]
    return rs.request(RTM_GETLINK, {"family": socket.AF_UNSPEC}, mask, dump=True)


def addresses(rs: RouteSocket) -> list[Any]:
    return rs.request(RTM_GETADDR, {"family": socket.AF_UNSPEC}, [], dump=True)


def route_get(rs: RouteSocket, dst: str) -> list[Any]:
    """`ip route get DST` (IPv4 or IPv6)."""
    six = ":" in dst
    fields = {"family": socket.AF_INET6 if six else socket.AF_INET, "dst_len": 128 if six else 32}
    return rs.request(RTM_GETROUTE, fields, [("RTA_DST", dst)], dump=False)


def netnsid(rs: RouteSocket, fd: int) -> list[Any]:
    """The id this namespace gave the namespace open at `fd` (RTM_GETNSID)."""
    return rs.request(RTM_GETNSID, {}, [("NETNSA_FD", fd)], dump=False)


__all__ = [
    "RouteSocket",
    "addresses",
    "lean_pyroute2",
    "links",
    "netlink_error",
    "netnsid",
    "route_get",
]
