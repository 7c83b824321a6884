"""A rootless Podman for the tests, for real: a throwaway user runs a container behind
slirp4netns, and flowtrace (root) traces it through that user's API socket.

Debian's rootless Podman needs /dev/net/tun to be usable by the user (udev makes it
0666 on a normal machine; this sandbox has no udev and leaves it 0600).  The test does
not change the host's device: the user's Podman runs in a private mount namespace of
the test's own where a 0666 tun node (the same device, 10:200) is bind-mounted over
/dev/net/tun.  Everything is removed at the end: the container, the user's processes
(by pid), the user with its home and subordinate ids, its runtime directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowtrace.endpoints.podman_service import answers
from flowtrace.lab.images import build_image_tar, busybox_applets

CONTAINER = "ftrl-c1"
IMAGE = "localhost/ftrl/busybox:1"

#: Run as root inside `unshare --mount`: a usable tun for this namespace only, then the
#: user's Podman (import, a container, its API), which keeps the namespace alive.
SCRIPT = """
set -e
mount -t tmpfs -o mode=755 tmpfs "$DEVDIR"
mknod -m 666 "$DEVDIR/tun" c 10 200
mount --bind "$DEVDIR/tun" /dev/net/tun
exec setpriv --reuid="$RL_UID" --regid="$RL_UID" --init-groups --reset-env \\
    env HOME="$RL_HOME" XDG_RUNTIME_DIR="$RL_RUNTIME" PATH=/usr/sbin:/usr/bin:/sbin:/bin \\
    sh -c 'cd "$HOME" &&
        podman import --change "CMD [\\"sleep\\", \\"infinity\\"]" image.tar "$0" >/dev/null &&
        podman run -d --name "$1" --ulimit nofile=1024:1024 --ulimit nproc=32768:32768 \\
            "$0" sleep 600 >/dev/null &&
        exec podman system service --time=0 "unix://$XDG_RUNTIME_DIR/podman/podman.sock"' \\
    "$RL_IMAGE" "$RL_CONTAINER"
"""


@dataclass
class RootlessUser:
    name: str
    uid: int
    home: str
    runtime: str
    service: subprocess.Popen[bytes]

    @property
    def socket(self) -> str:
        return f"unix://{self.runtime}/podman/podman.sock"

    def pids(self) -> list[int]:
        out = subprocess.run(["ps", "-u", self.name, "-o", "pid="], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]


def free_subordinate_range(size: int = 65536) -> int:
    start = 1_000_000
    for path in ("/etc/subuid", "/etc/subgid"):
        for line in Path(path).read_text().splitlines() if os.path.exists(path) else ():
            _, first, count = line.split(":")
            start = max(start, int(first) + int(count))
    return start


@pytest.fixture(scope="module")
def rootless_user(root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RootlessUser]:
    for tool in ("podman", "slirp4netns", "newuidmap", "setpriv", "unshare", "useradd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing (bash scripts/setup.sh --for-tests installs them)")
    name = f"ftrl{secrets.token_hex(3)}"
    first = free_subordinate_range()
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
    service = None
    user = None
    try:
        subprocess.run(
            ["usermod", "--add-subuids", f"{first}-{first + 65535}",
             "--add-subgids", f"{first}-{first + 65535}", name],
            check=True,
        )  # fmt: skip
        entry = pwd.getpwnam(name)
        runtime = f"/run/user/{entry.pw_uid}"
        os.makedirs(f"{runtime}/podman", mode=0o700)
        for path in (runtime, f"{runtime}/podman"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        with open("/bin/busybox", "rb") as binary:
            tar = build_image_tar(binary.read(), busybox_applets())
        image_tar = Path(entry.pw_dir) / "image.tar"
        image_tar.write_bytes(tar)
        os.chown(image_tar, entry.pw_uid, entry.pw_gid)
        devdir = tmp_path_factory.mktemp("ftrl-dev")
        env = {
            "PATH": os.environ["PATH"], "DEVDIR": str(devdir), "RL_UID": str(entry.pw_uid),
            "RL_HOME": entry.pw_dir, "RL_RUNTIME": runtime, "RL_IMAGE": IMAGE,
            "RL_CONTAINER": CONTAINER,
        }  # fmt: skip
        service = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", SCRIPT],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        user = RootlessUser(name, entry.pw_uid, entry.pw_dir, runtime, service)
        deadline = time.monotonic() + 60
        while not answers(user.socket.removeprefix("unix://")):
            if service.poll() is not None:
                error = service.stderr.read().decode() if service.stderr else ""
                pytest.fail(f"rootless Podman did not start: {error.strip()[-300:]}")
            if time.monotonic() > deadline:
                pytest.fail("rootless Podman's API did not answer within 60 s")
            time.sleep(0.2)
        yield user
    finally:
        if service is not None and service.poll() is None:
            service.terminate()
            service.wait(10)
        if user is not None:
            subprocess.run(
                ["setpriv", f"--reuid={user.uid}", f"--regid={user.uid}", "--init-groups",
                 "env", f"HOME={user.home}", f"XDG_RUNTIME_DIR={user.runtime}",
                 "podman", "rm", "--force", "--time", "0", CONTAINER],
                capture_output=True, check=False,
            )  # fmt: skip
            for _ in range(50):  # the pause process, conmon, slirp4netns: this user's only
                pids = user.pids()
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
                time.sleep(0.1)
            shutil.rmtree(user.runtime, ignore_errors=True)
        subprocess.run(["userdel", "--remove", name], capture_output=True, check=False)
        for path in ("/etc/subuid", "/etc/subgid"):
            if os.path.exists(path):
                lines = Path(path).read_text().splitlines(keepends=True)
                kept = [line for line in lines if not line.startswith(f"{name}:")]
                if kept != lines:
                    Path(path).write_text("".join(kept))
