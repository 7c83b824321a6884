"""Which process owns a socket: /proc/net tables read inside a namespace, then /proc/*/fd.

A DNS server or a userland proxy is a socket bound to an address and port in some
network namespace, owned by a process that may live elsewhere (Docker's embedded DNS
listens inside each container's namespace, but the socket belongs to dockerd).  The
kernel's /proc/<task>/net/{tcp,udp} tables list a namespace's sockets with their inodes;
/proc/<pid>/fd links name the inodes a process holds.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

#: /proc/net/tcp's state column: 0A is LISTEN.
TCP_LISTEN = 0x0A


@dataclass(frozen=True)
class SocketEntry:
    """One row of /proc/net/{tcp,udp}{,6}."""

    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    state: int
    inode: int


@dataclass(frozen=True)
class SocketOwner:
    pid: int
    name: str  # /proc/PID/comm
    cmdline: str

    def __str__(self) -> str:
        return f"{self.name} (pid {self.pid})"


def _hex_address(text: str) -> tuple[str, int]:
    """'0B00007F:99DF' -> ('127.0.0.11', 39391); the kernel prints host-order words."""
    address, _, port = text.partition(":")
    raw = bytes.fromhex(address)
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    packed = b"".join(struct.pack("!I", w) for w in words)
    ip = socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)
    return str(ipaddress.ip_address(ip)), int(port, 16)


def parse_proc_net(text: str) -> list[SocketEntry]:
    """The sockets of one /proc/net/{tcp,udp}{,6} table (the header line is skipped)."""
    entries = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local_ip, local_port = _hex_address(fields[1])
        remote_ip, remote_port = _hex_address(fields[2])
        entries.append(
            SocketEntry(
                local_ip, local_port, remote_ip, remote_port, int(fields[3], 16), int(fields[9])
            )
        )
    return entries


def remote_peers(entries: list[SocketEntry]) -> list[str]:
    """The remote addresses of connected sockets (listeners and unbound ones left out)."""
    unset = ("0.0.0.0", "::")
    return [e.remote_ip for e in entries if e.remote_ip not in unset]


def read_table(path: str) -> list[SocketEntry]:
    """One /proc/.../net/{tcp,udp}{,6} table; empty when it cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return parse_proc_net(handle.read())
    except OSError:
        return []


def process_sockets(pid: int | str, proto: str = "tcp") -> list[SocketEntry]:
    """IPv4 and IPv6 sockets of one protocol in the namespace of process `pid` ("self":
    ours)."""
    return read_table(f"/proc/{pid}/net/{proto}") + read_table(f"/proc/{pid}/net/{proto}6")


def socket_fds(pid: int) -> dict[int, int]:
    """Socket inode -> file descriptor number, among a process's open files."""
    found: dict[int, int] = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            found[int(link[8:-1])] = int(fd)
    return found


def read_sockets(ns_path: str, proto: str) -> list[SocketEntry]:
    """The namespace's sockets of one protocol ("tcp" or "udp"), IPv4 and IPv6."""
    from flowtrace.endpoints.netns import run_in_netns

    def read() -> list[SocketEntry]:
        # thread-self: this thread's namespace, not the process's
        return [e for t in (proto, proto + "6") for e in read_table(f"/proc/thread-self/net/{t}")]

    return run_in_netns(ns_path, read)


def owner_of(inode: int) -> SocketOwner | None:
    """The first process holding socket `inode` open, or None."""
    target = f"socket:[{inode}]"
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fd_dir = f"/proc/{entry.name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") != target:
                    continue
            except OSError:
                continue
            return _process(int(entry.name))
    return None


def _process(pid: int) -> SocketOwner:
    try:
        with open(f"/proc/{pid}/comm") as f:
            name = f.read().strip()
        with open(f"/proc/{pid}/cmdline", "rb") as fb:
            cmdline = fb.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        name, cmdline = "?", ""
    return SocketOwner(pid, name, cmdline)


def bound_socket(
    entries: list[SocketEntry], ip: str, port: int, listening_only: bool = False
) -> SocketEntry | None:
    """The socket a packet to ip:port is delivered to: an exact bind before a wildcard one."""
    candidates = [
        e for e in entries if e.local_port == port and (not listening_only or e.state == TCP_LISTEN)
    ]
    for wanted in (ip, "0.0.0.0", "::"):
        for e in candidates:
            if e.local_ip == wanted and e.remote_port == 0:
                return e
    return None


def find_socket_owner(ns_path: str, proto: str, ip: str, port: int) -> SocketOwner | None:
    """Who receives proto packets to ip:port in that namespace, or None."""
    entry = bound_socket(read_sockets(ns_path, proto), ip, port, listening_only=proto == "tcp")
    return owner_of(entry.inode) if entry is not None else None


def connections_to(pid: int, remote_ip: str, remote_port: int) -> dict[tuple[str, int], int]:
    """A process's own TCP connections to one address: (local address, port) -> its fd."""
    fds = socket_fds(pid)
    return {
        (s.local_ip, s.local_port): fds[s.inode]
        for s in process_sockets(pid)
        if s.inode in fds and (s.remote_ip, s.remote_port) == (remote_ip, remote_port)
    }


def fd_connected_from(pid: int, client: tuple[str, int]) -> int | None:
    """A process's fd of the TCP connection it has with `client`, if any."""
    fds = socket_fds(pid)
    for s in process_sockets(pid):
        if s.inode in fds and (s.remote_ip, s.remote_port) == client:
            return fds[s.inode]
    return None
