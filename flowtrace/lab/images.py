"""The lab's image without a registry: the machine's static busybox, checked, put in a
tar made in memory with its applet links and the web page, and imported."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable
from typing import Any

from flowtrace.errors import FlowtraceError, MissingToolError
from flowtrace.lab.base import (
    BUSYBOX,
    IMAGE,
    IMAGE_REPOSITORY,
    IMAGE_TAG,
    LAB_LABEL,
    LAB_LABEL_VALUE,
    WEB_PAGE,
    WEB_ROOT,
)
from flowtrace.lab.engine import get_image

_INSTALL_HINT = "apt-get install busybox-static"


def is_dynamic_elf(head: bytes) -> bool:
    """True when an ELF file asks for a program interpreter (it is dynamically linked).

    `head` must hold the ELF header and the program header table.
    """
    if head[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    wide = head[4] == 2
    order = "<" if head[5] == 1 else ">"
    if wide:
        (phoff,) = struct.unpack_from(order + "Q", head, 0x20)
        phentsize, phnum = struct.unpack_from(order + "HH", head, 0x36)
    else:
        (phoff,) = struct.unpack_from(order + "I", head, 0x1C)
        phentsize, phnum = struct.unpack_from(order + "HH", head, 0x2A)
    pt_interp = 3
    for number in range(phnum):
        offset = phoff + number * phentsize
        if offset + 4 > len(head):
            raise ValueError("program header table beyond the bytes given")
        (kind,) = struct.unpack_from(order + "I", head, offset)
        if kind == pt_interp:
            return True
    return False


def check_busybox(path: str = BUSYBOX) -> None:
    """The image is this one file, so it must exist and need no shared libraries."""
    try:
        with open(path, "rb") as binary:
            head = binary.read(8192)
    except FileNotFoundError:
        raise MissingToolError(f"busybox is missing ({path}): {_INSTALL_HINT}") from None
    try:
        dynamic = is_dynamic_elf(head)
    except ValueError:
        raise MissingToolError(f"{path} is not a busybox program: {_INSTALL_HINT}") from None
    if dynamic:
        raise MissingToolError(
            f"{path} is dynamically linked and cannot run alone in an image: {_INSTALL_HINT}"
        )


def busybox_applets(path: str = BUSYBOX) -> list[str]:
    """The applet paths busybox installs itself under (bin/sh, usr/bin/wget...)."""
    import subprocess  # only `lab up` runs busybox; the CLI imports the lab on every start

    result = subprocess.run(
        [path, "--list-full"], capture_output=True, text=True, check=False, timeout=10
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise MissingToolError(
            f"{path} --list-full failed; install a full busybox: {_INSTALL_HINT}"
        )
    return result.stdout.split()


def build_image_tar(busybox: bytes, applets: Iterable[str], page: str = WEB_PAGE) -> bytes:
    """A root filesystem of one static busybox, its applet links and the web page."""
    import tarfile  # slow to import (bz2, lzma, shutil), and needed once, to make the image

    buffer = io.BytesIO()
    added: set[str] = set()

    def add_dir(tar: tarfile.TarFile, path: str, mode: int = 0o755) -> None:
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            name = "/".join(parts[:depth])
            if name in added:
                continue
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode if name == path else 0o755
            tar.addfile(info)
            added.add(name)

    def add_file(tar: tarfile.TarFile, path: str, data: bytes, mode: int = 0o644) -> None:
        add_dir(tar, os.path.dirname(path))
        info = tarfile.TarInfo(path)
        info.size = len(data)
        info.mode = mode
        tar.addfile(info, io.BytesIO(data))
        added.add(path)

    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add_dir(tar, "tmp", 0o1777)
        add_dir(tar, "root", 0o700)
        add_file(tar, "bin/busybox", busybox, 0o755)
        add_file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        add_file(tar, "etc/group", b"root:x:0:\n")
        add_file(tar, f"{WEB_ROOT.strip('/')}/index.html", page.encode())
        for applet in applets:
            name = os.path.normpath(applet.strip("/"))
            if name in added or name.startswith("..") or "/" not in name:
                continue
            add_dir(tar, os.path.dirname(name))
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = "/bin/busybox"
            info.mode = 0o777
            tar.addfile(info)
            added.add(name)
    return buffer.getvalue()


def ensure_image(client: Any, busybox: str = BUSYBOX) -> list[str]:
    """Import the lab's image when no image carries its tag (a stranger's is a conflict,
    found before this runs)."""
    if get_image(client) is not None:
        return []
    check_busybox(busybox)
    with open(busybox, "rb") as binary:
        data = build_image_tar(binary.read(), busybox_applets(busybox))
    client.api.import_image_from_data(
        data,
        repository=IMAGE_REPOSITORY,
        tag=IMAGE_TAG,
        changes=[
            f"LABEL {LAB_LABEL}={LAB_LABEL_VALUE}",
            "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            'CMD ["sleep", "infinity"]',
        ],
    )
    if get_image(client) is None:
        raise FlowtraceError(f"Docker did not keep the imported image {IMAGE}")
    return [f"created image {IMAGE} from {busybox}"]
