"""Who may read a pcap set: its owner only.

A set holds captured payloads (HTTP bodies, DNS names, credentials in clear text), so
its files are written 0600 and its folder 0700.  flowtrace runs as root; run through
sudo, the set is handed to the user who ran sudo (SUDO_UID/SUDO_GID), so that they can
open it in Wireshark without root.  The modes are set explicitly, whatever the umask.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

FILE_MODE = 0o600
FOLDER_MODE = 0o700


def invoking_user(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """(uid, gid) of the user who ran `sudo flowtrace ...`; None when not run through sudo."""
    env = os.environ if environ is None else environ
    if os.geteuid() != 0:
        return None
    uid, gid = env.get("SUDO_UID", ""), env.get("SUDO_GID", "")
    if not (uid.isdigit() and gid.isdigit()) or int(uid) == 0:
        return None
    return int(uid), int(gid)


def own_fd(fd: int) -> None:
    """Make an open file the set's: mode 0600, owned by the sudo user if there is one."""
    os.fchmod(fd, FILE_MODE)
    owner = invoking_user()
    if owner is not None:
        os.fchown(fd, *owner)


def own_folder(folder: Path) -> None:
    """A folder flowtrace made for a set: mode 0700, owned by the sudo user if any."""
    os.chmod(folder, FOLDER_MODE)
    owner = invoking_user()
    if owner is not None:
        os.chown(folder, *owner)


def hand_over(folder: Path) -> None:
    """A folder flowtrace made to hold sets (captures/): left readable, but the sudo user's,
    so they can remove their sets without root."""
    owner = invoking_user()
    if owner is not None:
        with contextlib.suppress(OSError):
            os.chown(folder, *owner)


def create_private(path: Path, flags: int = 0, *, readable: bool = False) -> int:
    """Open `path` for writing (and reading), created or emptied with the set's mode and
    owner."""
    access = os.O_RDWR if readable else os.O_WRONLY
    fd = os.open(path, access | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | flags, FILE_MODE)
    try:
        own_fd(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd
