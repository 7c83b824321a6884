"""When a set cannot be written to its end: room kept for the last manifest, and the words.

A disk that fills under a capture must still take the manifest that says the set is
incomplete and why: `Reserve` holds a little room in the set's folder from the start,
given back just before that last manifest is written.  `explain` says what happened
in one line: how many packets the set holds, and what filled the disk (the set itself,
or other files) with the file system's size and mount point.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import os
from pathlib import Path

from flowtrace.pcap.ownership import create_private

RESERVE_NAME = ".flowtrace-reserve"
#: Room kept for the final manifest: at most this, at most an eighth of the free space.
RESERVE_BYTES = 1 << 20
#: errnos that mean "the disk is full".
NO_SPACE = (errnos.ENOSPC, errnos.EDQUOT, errnos.EFBIG)


class Reserve:
    """A file of zeros in the set's folder, given back when the last manifest needs room."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / RESERVE_NAME
        self.held = False

    def take(self) -> None:
        try:
            stats = os.statvfs(self.path.parent)
            size = min(RESERVE_BYTES, stats.f_bavail * stats.f_frsize // 8)
            if size < 4096:
                return
            fd = create_private(self.path)
        except OSError:
            return  # no room even for that, or a read-only folder: the writes will say so
        try:
            os.posix_fallocate(fd, 0, size)
            self.held = True
        except OSError:
            with contextlib.suppress(OSError):
                self.path.unlink()
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.held:
            self.held = False
            with contextlib.suppress(OSError):
                self.path.unlink()


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            whole = unit == "bytes" or float(n).is_integer()
            return f"{n:,.0f} {unit}" if whole else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def mount_of(path: Path) -> tuple[str, str]:
    """(mount point, file system type) of the mount holding `path`."""
    best = ("/", "?")
    target = os.path.realpath(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return best
    length = 0
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        fstype = line.split(" - ", 1)[1].split()[0]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= length:
            best, length = (point, fstype), len(point)
    return best


def what_filled(folder: Path, capture: Path) -> str:
    """Whether the set itself or other files filled the file system, with sizes."""
    existing = folder if folder.exists() else folder.parent
    point, fstype = mount_of(existing)
    try:
        stats = os.statvfs(existing)
        total = stats.f_blocks * stats.f_frsize
    except OSError:
        return f"the {fstype} at {point} is full"
    try:
        size = os.stat(capture).st_size
    except OSError:
        size = 0
    where = f"the {_size(total)} {fstype} at {point}"
    if total and size * 2 >= total:
        return f"{capture.name} filled {where} ({_size(size)} of it)"
    return f"other files fill {where} ({capture.name} takes {_size(size)} of it)"


def explain(err_no: int, folder: Path, capture: Path, packets: int) -> str:
    """The one line a write failure ends a recording with."""
    held = f"the set holds {packets:,} packet{'s' if packets != 1 else ''}"
    closed = f"{held} and ends on a complete block; its manifest says complete: false"
    if err_no in NO_SPACE:
        return f"{folder}: no space left on device: {closed}; {what_filled(folder, capture)}"
    if err_no == errnos.EROFS:
        point, _ = mount_of(folder if folder.exists() else folder.parent)
        return f"{folder}: the file system at {point} is read-only: {closed}"
    if err_no == errnos.ENOENT:
        return (
            f"{folder}: the set's folder was removed during the recording: flowtrace made it "
            f"again and wrote what it had recorded there; {closed}"
        )
    return f"{folder}: cannot write the set ({os.strerror(err_no)}): {closed}"


def cannot_start(err_no: int, folder: Path) -> str:
    """The one line for a set that cannot even be begun (nothing has been sent yet)."""
    if err_no == errnos.EROFS:
        point, _ = mount_of(folder if folder.exists() else folder.parent)
        why = f"the file system at {point} is read-only"
    elif err_no in NO_SPACE:
        why = f"no space left on device ({what_filled(folder, folder / '-')})"
    else:
        why = os.strerror(err_no)
    return f"{folder}: cannot record a set there: {why}; choose another -o folder, or --no-record"
