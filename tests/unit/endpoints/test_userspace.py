"""The userspace carrier behind a rootless container's tap, found in a /proc tree laid out
as this machine's was with rootless Podman 4.3.1 and slirp4netns 1.2.0 (the command line
and fdinfo below are recorded from it)."""

from __future__ import annotations

import os
from pathlib import Path

from flowtrace.endpoints.userspace import carrier_note, carrier_of, netns_target, tap_name

NETNS = "/run/user/1001/netns/netns-5b921338-8253-c7db-d8d0-0531f94f7fd0"
SLIRP = (
    "/usr/bin/slirp4netns", "--disable-host-loopback", "--mtu=65520", "--enable-sandbox",
    "--enable-seccomp", "--enable-ipv6", "-c", "-e", "3", "-r", "4", "--netns-type=path",
    NETNS, "tap0",
)  # fmt: skip
FDINFO = "pos:\t90\nflags:\t0100002\nmnt_id:\t1053\nino:\t2\niff:\ttap0\n"


def test_the_tap_a_tun_descriptor_is_and_the_namespace_a_carrier_names() -> None:
    assert tap_name(FDINFO) == "tap0"
    assert tap_name("pos:\t0\nflags:\t02\n") is None
    assert netns_target(SLIRP) == ("path", NETNS)
    assert netns_target(("slirp4netns", "--configure", "--mtu=65520", "4242", "tap0")) == (
        "pid", "4242",
    )  # fmt: skip
    assert netns_target(("slirp4netns", "-c", "-r", "3", "4242", "tap0")) == ("pid", "4242")
    assert netns_target(("pasta", "--config-net", "--netns", "/run/netns/x")) == (
        "path",
        "/run/netns/x",
    )
    assert netns_target(("pasta", "-q", "4242")) == ("pid", "4242")
    assert netns_target(("rootlesskit", "--net=slirp4netns", "dockerd")) is None


def fake_proc(root: Path, pid: int, argv: tuple[str, ...], fdinfo: str = FDINFO) -> None:
    (root / str(pid) / "fd").mkdir(parents=True)
    (root / str(pid) / "fdinfo").mkdir()
    os.symlink("/dev/net/tun", root / str(pid) / "fd" / "7")
    os.symlink("/dev/null", root / str(pid) / "fd" / "0")
    (root / str(pid) / "fdinfo" / "7").write_text(fdinfo)
    (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_the_carrier_whose_command_line_names_the_containers_namespace(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_proc(proc, 6737, SLIRP)
    netns_file = proc / "6737" / "root" / NETNS.lstrip("/")
    netns_file.parent.mkdir(parents=True)
    netns_file.write_text("")  # the namespace, as the carrier's mount namespace shows it
    other = "/run/user/1001/netns/netns-00000000-0000-0000-0000-000000000000"
    fake_proc(proc, 7000, (*SLIRP[:-2], other, "tap0"))
    inode = os.stat(netns_file).st_ino
    found = carrier_of(inode, "tap0", str(proc))
    assert found is not None and found.pid == 6737 and found.program == "slirp4netns"
    assert found.cmdline == SLIRP
    assert carrier_of(inode, "tap1", str(proc)) is None
    note = carrier_note("rl1", found)
    assert note.startswith(
        f"the packet leaves rl1 through tap0, the tap device of slirp4netns (pid 6737, user "
        f"{found.user}), a TCP/IP stack in userspace: it reads the frames"
    )
    assert note.endswith("ICMP errors included, is slirp4netns's own doing")


def test_the_only_carrier_with_that_tap_when_none_names_the_namespace(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_proc(proc, 42, ("/usr/bin/pasta", "--config-net", "--netns", "/gone"))
    found = carrier_of(12345, "tap0", str(proc))
    assert found is not None and (found.pid, found.program) == (42, "pasta")
    assert "passt" in found.what
