"""Open a file a user named for reading, refusing anything but a regular file.

A FIFO given as a capture or as a set's manifest.json would block `open()` forever, a
device such as /dev/zero would be read for ever, a socket cannot be opened at all:
readers refuse them by their type before opening, then open non-blocking and check the
type again on the descriptor (the path may have been swapped in between).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from flowtrace.errors import CaptureFormatError, FlowtraceError, NotFoundError

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def kind_of(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, words in _KINDS:
        if test(mode):
            return words
    return "not a regular file"


def refuse_special(path: Path, what: str) -> CaptureFormatError:
    return CaptureFormatError(f"{path}: is {what}, not a file: flowtrace reads only regular files")


def open_for_reading(path: Path | str) -> BinaryIO:
    """A binary file object for a regular file; one-line errors for everything else."""
    path = Path(path)
    try:
        special = kind_of(os.stat(path).st_mode)
        if special is not None:
            raise refuse_special(path, special)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file") from None
    except PermissionError:
        raise FlowtraceError(
            f"{path}: permission denied (flowtrace writes sets readable by their owner only: "
            "read it as that user or as root)"
        ) from None
    except OSError as err:
        raise FlowtraceError(f"{path}: {err.strerror}") from None
    try:
        special = kind_of(os.fstat(fd).st_mode)
        if special is not None:
            raise refuse_special(path, special)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
