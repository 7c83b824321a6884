"""The lab's image: the ELF check that busybox is static, and the tar it is imported from."""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path

import pytest

from flowtrace.errors import ExitStatus, MissingToolError
from flowtrace.lab.images import build_image_tar, check_busybox, is_dynamic_elf

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
