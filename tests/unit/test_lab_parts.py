"""The lab's pure parts: the image tar, the ELF check, the address-clash check, rendering."""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path

import pytest

from flowtrace.errors import ExitStatus, MissingToolError
from flowtrace.lab import (
    CONTAINERS,
    ContainerSpec,
    LabContainer,
    LabNetwork,
    LabState,
    OutsideHost,
    build_image_tar,
    check_busybox,
    destinations_inside,
    hosts_file_addresses,
    is_dynamic_elf,
    overlapping_use,
    proc_net_peers,
    render_changes,
    render_removed,
    render_state,
    render_summary,
    resolv_conf_nameservers,
)

PT_LOAD, PT_INTERP = 1, 3


def elf64(segment_types: list[int]) -> bytes:
    """A little-endian ELF64 header followed by program headers of the given types."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, len(segment_types))  # e_phentsize, e_phnum
    table = b"".join(struct.pack("<I", kind) + bytes(52) for kind in segment_types)
    return bytes(header) + table


def elf32_big_endian(segment_types: list[int]) -> bytes:
    header = bytearray(52)
    header[:6] = b"\x7fELF\x01\x02"
    struct.pack_into(">I", header, 0x1C, 52)
    struct.pack_into(">HH", header, 0x2A, 32, len(segment_types))
    table = b"".join(struct.pack(">I", kind) + bytes(28) for kind in segment_types)
    return bytes(header) + table


def test_static_and_dynamic_elf_are_told_apart() -> None:
    assert is_dynamic_elf(elf64([PT_LOAD, PT_INTERP, PT_LOAD]))
    assert not is_dynamic_elf(elf64([PT_LOAD, PT_LOAD]))
    assert is_dynamic_elf(elf32_big_endian([PT_INTERP]))
    assert not is_dynamic_elf(elf32_big_endian([PT_LOAD]))
    with pytest.raises(ValueError):
        is_dynamic_elf(b"#!/bin/sh\n")


def test_check_busybox_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(MissingToolError) as missing:
        check_busybox(str(tmp_path / "busybox"))
    assert "apt-get install busybox-static" in missing.value.message
    assert missing.value.status == ExitStatus.MISSING_TOOL

    dynamic = tmp_path / "dynamic"
    dynamic.write_bytes(elf64([PT_LOAD, PT_INTERP]))
    with pytest.raises(MissingToolError, match="dynamically linked"):
        check_busybox(str(dynamic))

    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(MissingToolError, match="not a busybox program"):
        check_busybox(str(script))

    static = tmp_path / "static"
    static.write_bytes(elf64([PT_LOAD]))
    check_busybox(str(static))


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {info.name: info for info in tar.getmembers()}


def test_image_tar_holds_busybox_links_and_page() -> None:
    binary = b"\x7fELF pretend busybox"
    data = build_image_tar(
        binary,
        ["bin/busybox", "bin/sh", "usr/bin/wget", "sbin/ip", "../escape", "bin/sh", "nodir"],
        page="hello",
    )
    found = members(data)
    assert found["bin/busybox"].isfile() and found["bin/busybox"].mode == 0o755
    for applet in ("bin/sh", "usr/bin/wget", "sbin/ip"):
        assert found[applet].issym() and found[applet].linkname == "/bin/busybox"
    assert "../escape" not in found and "escape" not in found and "nodir" not in found
    assert found["tmp"].mode == 0o1777
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("www/index.html").read() == b"hello"  # type: ignore[union-attr]
        assert tar.extractfile("bin/busybox").read() == binary  # type: ignore[union-attr]
        order = [info.name for info in tar.getmembers()]
    for position, name in enumerate(order):
        if "/" in name:
            parent = name.rsplit("/", 1)[0]
            assert parent in order[:position], f"{name} comes before its folder"


def test_address_clash_ignores_default_route_and_own_link() -> None:
    addresses = [("192.0.2.2", 24, "eth0"), ("203.0.113.1", 24, "ft-uplink")]
    routes = [
        ("0.0.0.0", 0, "eth0"),
        ("192.0.2.0", 24, "eth0"),
        ("203.0.113.0", 24, "ft-uplink"),
        ("198.51.100.0", 24, "veth9"),
    ]
    assert overlapping_use("203.0.113.0/24", addresses, routes, "ft-uplink") == []


def test_address_clash_reports_other_links() -> None:
    addresses = [("203.0.113.9", 32, "tun0")]
    routes = [("203.0.113.128", 25, "wg0"), ("203.0.0.0", 16, "eth1")]
    assert overlapping_use("203.0.113.0/24", addresses, routes, "ft-uplink") == [
        "address 203.0.113.9/32 on tun0",
        "route 203.0.113.128/25 via wg0",
        "route 203.0.0.0/16 via eth1",
    ]


HOSTS = """\
127.0.0.1 localhost
# 203.0.113.5 commented-out
203.0.113.80    deb.debian.org
203.0.113.80    pypi.org  # the mirror
::1 ip6-localhost
"""

RESOLV = "search example\nnameserver 10.255.255.53\noptions ndots:1\nnameserver 203.0.113.9\n"

# /proc/net/tcp: a listener (remote 0.0.0.0) and a connection to 203.0.113.80:443.
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   1: 0200000A:D3C2 507100CB:01BB 01 00000000:00000000 02:000A7B1C 00000000     0
"""


def test_hosts_resolv_and_sockets_are_read() -> None:
    assert hosts_file_addresses(HOSTS) == [
        ("127.0.0.1", "localhost"),
        ("203.0.113.80", "deb.debian.org"),
        ("203.0.113.80", "pypi.org"),
        ("::1", "ip6-localhost"),
    ]
    assert resolv_conf_nameservers(RESOLV) == ["10.255.255.53", "203.0.113.9"]
    assert proc_net_peers(PROC_NET_TCP) == ["203.0.113.80"]


def test_a_mirror_inside_the_outside_network_is_a_clash() -> None:
    destinations = [(ip, f"{name} in /etc/hosts") for ip, name in hosts_file_addresses(HOSTS)]
    destinations += [(ip, "a name server") for ip in resolv_conf_nameservers(RESOLV)]
    assert destinations_inside("203.0.113.0/24", destinations) == [
        "203.0.113.80 (deb.debian.org in /etc/hosts)",
        "203.0.113.80 (pypi.org in /etc/hosts)",
        "203.0.113.9 (a name server)",
    ]
    assert destinations_inside("203.0.113.0/28", destinations) == ["203.0.113.9 (a name server)"]
    assert destinations_inside("198.51.100.0/24", [("fe80::1%eth0", "x"), ("bad", "y")]) == []


def test_spec_digest_follows_the_settings() -> None:
    base = ContainerSpec("x", "bridge")
    assert base.digest() == ContainerSpec("y", "bridge").digest()  # the name is not a setting
    assert base.digest() != ContainerSpec("x", "ftlab").digest()
    assert base.digest() != ContainerSpec("x", "bridge", ("sleep", "1")).digest()
    assert base.digest() != ContainerSpec("x", "bridge", ports=((80, 8080),)).digest()
    assert [spec.name for spec in CONTAINERS] == ["c1", "c2", "c3", "c4", "web"]


def whole_lab() -> LabState:
    return LabState(
        image_id="sha256:0123456789abcdef",
        networks=(
            LabNetwork("bridge", "n1", "docker0", "172.17.0.0/16", "172.17.0.1"),
            LabNetwork("ftlab", "n2", "br-0123456789ab", "172.18.0.0/16", "172.18.0.1"),
        ),
        containers=(
            LabContainer("c1", "aaaaaaaaaaaaXYZ", "running", 42, {"bridge": "172.17.0.2"}),
            LabContainer(
                "web",
                "bbbbbbbbbbbbXYZ",
                "running",
                43,
                {"bridge": "172.17.0.4"},
                ("0.0.0.0:8080->80/tcp",),
            ),
        ),
        outside=OutsideHost(
            present=True,
            addresses=("203.0.113.2/28",),
            up=True,
            uplink_present=True,
            uplink_addresses=("203.0.113.1/28",),
            uplink_up=True,
            paired=True,
        ),
    )


def test_render_whole_lab() -> None:
    state = whole_lab()
    assert state.complete and state.outside.problems == []
    text = render_state(state)
    lines = text.splitlines()
    assert lines[0] == "image flowtrace-lab/busybox:1  0123456789ab"
    header = next(line for line in lines if line.startswith("CONTAINER"))
    c1 = next(line for line in lines if line.startswith("c1 "))
    assert c1.split() == [
        "c1",
        "aaaaaaaaaaaa",
        "running",
        "/proc/42/ns/net",
        "bridge",
        "172.17.0.2",
        "-",
    ]
    assert header.index("NETNS") == c1.index("/proc/42/ns/net")  # columns line up
    assert "0.0.0.0:8080->80/tcp" in text
    assert "br-0123456789ab  172.18.0.0/16  172.18.0.1" in text
    assert "/run/netns/ft-outside  eth0       203.0.113.2/28  ft-uplink 203.0.113.1/28" in text
    assert all(line == line.rstrip() for line in lines)
    assert render_summary(state).startswith("the lab is up")


def test_render_missing_parts() -> None:
    state = LabState(
        networks=(
            LabNetwork("bridge", "n1", "docker0", "172.17.0.0/16", "172.17.0.1"),
            LabNetwork("ftlab"),
        ),
        containers=(LabContainer("c1"), LabContainer("c2", "cccccccccccc", "exited")),
        missing=("network ftlab", "container c1", "container c2 (exited)"),
    )
    text = render_state(state)
    assert "ftlab    missing" in text
    c2 = next(line for line in text.splitlines() if line.startswith("c2 "))
    assert c2.split()[:4] == ["c2", "cccccccccccc", "exited", "-"]
    assert "ft-outside    missing" in text
    assert render_summary(state) == "missing: network ftlab, container c1, container c2 (exited)"
    assert OutsideHost().problems == ["namespace ft-outside", "veth ft-uplink"]


def test_render_changes_and_removals() -> None:
    assert render_changes(()) == "everything was already up"
    assert render_changes(["created network ftlab"]) == "+ created network ftlab"
    assert render_removed([]) == "nothing to remove: the lab was not up"
    assert render_removed(["network ftlab", "namespace ft-outside"]) == (
        "- removed network ftlab\n- removed namespace ft-outside"
    )
