"""Userspace network carriers: the process behind a rootless container's tap device.

A rootless engine cannot make veths into the host's namespace: slirp4netns or pasta
(Podman; Docker's RootlessKit runs one of them too) opens a tap device inside the
container's (or RootlessKit's) namespace, reads the frames written to it and sends
what they carry again from its own sockets, in its own namespace.  Past the tap there
is no device a packet crosses, only a process, so flowtrace names that process.

It is found as the kernel shows it: the process holding /dev/net/tun open with the
tap's name in the descriptor's fdinfo (`iff:`), whose command line names the
container's namespace (a path, resolved in that process's own mount namespace, or a
pid).  The parsers are pure; `carrier_of` reads /proc.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

#: The carriers flowtrace knows by name, and what each is.
KNOWN = {
    "slirp4netns": "a TCP/IP stack in userspace",
    "pasta": "passt's translator between layer 2 and sockets, in userspace",
    "vpnkit": "a TCP/IP stack in userspace",
    "rootlesskit": "RootlessKit's network driver, in userspace",
}


@dataclass(frozen=True)
class Carrier:
    """The process carrying a tap device's traffic."""

    pid: int
    program: str  # "slirp4netns"
    user: str
    cmdline: tuple[str, ...]
    ifname: str

    @property
    def what(self) -> str:
        return KNOWN.get(self.program, "a process in userspace")


def tap_name(fdinfo: str) -> str | None:
    """The interface of a /dev/net/tun descriptor, from its fdinfo text (`iff:\\ttap0`)."""
    for line in fdinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "iff":
            return value.strip() or None
    return None


def netns_target(argv: tuple[str, ...]) -> tuple[str, str] | None:
    """The namespace a carrier's command line names: ("path", P) or ("pid", N) (pure).

    slirp4netns [OPTIONS] PID|PATH TAPNAME (PATH with --netns-type=path);
    pasta [OPTIONS] [PID] with --netns PATH (or -N); rootlesskit and others: None.
    """
    program = os.path.basename(argv[0]) if argv else ""
    args = list(argv[1:])
    if program == "pasta":
        for i, arg in enumerate(args):
            if arg in ("--netns", "-N") and i + 1 < len(args):
                return "path", args[i + 1]
            if arg.startswith("--netns="):
                return "path", arg.split("=", 1)[1]
        positional = [a for a in args if not a.startswith("-")]
        return ("pid", positional[-1]) if positional and positional[-1].isdigit() else None
    if program == "slirp4netns":
        by_path = "--netns-type=path" in args or any(
            a == "--netns-type" and i + 1 < len(args) and args[i + 1] == "path"
            for i, a in enumerate(args)
        )
        positional = _slirp_positional(args)
        if len(positional) >= 2:
            target = positional[-2]
            if by_path:
                return "path", target
            return ("pid", target) if target.isdigit() else ("path", target)
    return None


#: slirp4netns options that take a value as the next word.
_SLIRP_VALUED = frozenset(
    ("-c", "-e", "-r", "-m", "-6", "--mtu", "--cidr", "--api-socket", "--netns-type",
     "--userns-path", "--outbound-addr", "--outbound-addr6", "--exit-fd", "--ready-fd")
)  # fmt: skip


def _slirp_positional(args: list[str]) -> list[str]:
    positional = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _SLIRP_VALUED:
            i += 2
            continue
        if not arg.startswith("-"):
            positional.append(arg)
        i += 1
    return positional


def _tun_descriptors(proc: str) -> list[tuple[int, str]]:
    """(pid, tap name) of every /dev/net/tun descriptor open on this machine."""
    found = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        fd_dir = f"{proc}/{entry}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") != "/dev/net/tun":
                    continue
                name = tap_name(Path(f"{proc}/{entry}/fdinfo/{fd}").read_text())
            except OSError:
                continue
            if name:
                found.append((int(entry), name))
    return found


def _names_namespace(proc: str, pid: int, target: tuple[str, str] | None, inode: int) -> bool:
    if target is None:
        return False
    kind, value = target
    try:
        if kind == "pid":
            return os.stat(f"{proc}/{value}/ns/net").st_ino == inode
        # the path lives in the carrier's own mount namespace (rootless Podman's)
        return os.stat(f"{proc}/{pid}/root{value}").st_ino == inode
    except OSError:
        return False


def carrier_of(netns_inode: int, ifname: str, proc: str = "/proc") -> Carrier | None:
    """The process carrying the tap `ifname` of the namespace `netns_inode`, or None."""
    holders = [pid for pid, name in _tun_descriptors(proc) if name == ifname]
    chosen = None
    for pid in holders:
        argv = _cmdline(proc, pid)
        if _names_namespace(proc, pid, netns_target(argv), netns_inode):
            chosen = pid
            break
    if chosen is None and len(holders) == 1:
        chosen = holders[0]  # the only one on the machine with such a tap
    if chosen is None:
        return None
    argv = _cmdline(proc, chosen)
    return Carrier(
        chosen, os.path.basename(argv[0]) if argv else "?", _user(proc, chosen), argv, ifname
    )


def _cmdline(proc: str, pid: int) -> tuple[str, ...]:
    try:
        raw = Path(f"{proc}/{pid}/cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def _user(proc: str, pid: int) -> str:
    try:
        uid = os.stat(f"{proc}/{pid}").st_uid
    except OSError:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def carrier_note(label: str, carrier: Carrier) -> str:
    """The path's end at a tap, in words (pure)."""
    return (
        f"the packet leaves {label} through {carrier.ifname}, the tap device of "
        f"{carrier.program} (pid {carrier.pid}, user {carrier.user}), {carrier.what}: it "
        "reads the frames and sends what they carry again from its own "
        f"sockets, so past {label}/{carrier.ifname} there is no veth or bridge to watch and "
        f"what comes back on {carrier.ifname}, ICMP errors included, is {carrier.program}'s "
        "own doing"
    )
