"""scripts/setup.sh's engine decisions (scripts/lib/engine.sh), run for real with
`--decide-only` against stand-in dpkg-query, apt-get and systemctl on PATH that record
what they were asked: the one place the project uses stand-ins, because what is tested
is what the script decides to do to a machine, on machines this one is not.

An engine "answering with no package" is a unix socket served here with the answer
Docker 28 gives to GET /version; PID 1 is named by a file.
"""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SETUP = REPO / "scripts" / "setup.sh"
DATA = REPO / "tests" / "data" / "engines"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="setup.sh runs as root only")

FAKE_DPKG_QUERY = """#!/bin/sh
echo "dpkg-query $*" >> "$FAKE_LOG"
for pkg in "$@"; do :; done
line=$(grep "^$pkg " "$FAKE_INSTALLED" 2>/dev/null)
if [ -z "$line" ]; then
    echo "dpkg-query: no packages found matching $pkg" >&2
    exit 1
fi
printf 'install ok installed %s' "${line#* }"
"""

FAKE_APT_GET = """#!/bin/sh
echo "apt-get $*" >> "$FAKE_LOG"
case "$1" in
-s)
    shift 2  # -s install
    [ -f "$FAKE_REMOVES" ] && cat "$FAKE_REMOVES"
    for pkg in "$@"; do [ "$pkg" = -y ] || echo "Inst $pkg (1.0 Debian:12 [amd64])"; done
    ;;
*) echo "the decision tests never let apt-get change anything" >&2; exit 99 ;;
esac
"""

FAKE_SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> "$FAKE_LOG"
"""

DOCKER_28_VERSION = {
    "Platform": {"Name": "Docker Engine - Community"},
    "Components": [{"Name": "Engine", "Version": "28.2.2"}],
    "Version": "28.2.2",
    "ApiVersion": "1.50",
}


@dataclass
class Machine:
    """The stand-in machine: installed packages, PID 1, sockets; what was asked of it."""

    root: Path
    env: dict[str, str]

    def install(self, **packages: str) -> None:
        with open(self.root / "installed", "a") as out:
            for name, version in packages.items():
                out.write(f"{name.replace('_', '-')} {version}\n")

    def pid1(self, name: str) -> None:
        (self.root / "pid1").write_text(name + "\n")

    def apt_would_remove(self, *packages: str) -> None:
        (self.root / "removes").write_text("".join(f"Remv {p} [1.0]\n" for p in packages))

    def setup(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SETUP), "--decide-only", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )

    @property
    def asked(self) -> list[str]:
        log = self.root / "log"
        return log.read_text().splitlines() if log.exists() else []


class _VersionHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        body = json.dumps(DOCKER_28_VERSION).encode()
        self.wfile.write(
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (
        ("dpkg-query", FAKE_DPKG_QUERY),
        ("apt-get", FAKE_APT_GET),
        ("systemctl", FAKE_SYSTEMCTL),
    ):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    (tmp_path / "installed").write_text("")
    (tmp_path / "pid1").write_text("init\n")
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_LOG": str(tmp_path / "log"),
        "FAKE_INSTALLED": str(tmp_path / "installed"),
        "FAKE_REMOVES": str(tmp_path / "removes"),
        "FLOWTRACE_SETUP_PID1": str(tmp_path / "pid1"),
        "FLOWTRACE_SETUP_DOCKER_SOCKET": str(tmp_path / "docker.sock"),
        "FLOWTRACE_SETUP_PODMAN_SOCKET": str(tmp_path / "podman.sock"),
    }
    yield Machine(tmp_path, env)


@pytest.fixture
def answering_socket(machine: Machine) -> Iterator[None]:
    server = socketserver.UnixStreamServer(str(machine.root / "docker.sock"), _VersionHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _engine_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("setup: engine: "))


def _would(out: str) -> list[str]:
    return [line.removeprefix("setup: would: ") for line in out.splitlines() if "would:" in line]


def _asked_about(machine: Machine) -> set[str]:
    return {line.split()[-1] for line in machine.asked if line.startswith("dpkg-query")}


def test_docker_ce_installed_is_started_with_systemd_and_nothing_installed(
    machine: Machine,
) -> None:
    machine.install(docker_ce="5:28.2.2-1~debian.12~bookworm")
    machine.pid1("systemd")
    result = machine.setup()
    assert result.returncode == 0, result.stderr
    assert _engine_line(result.stdout) == (
        "setup: engine: Docker (docker-ce 5:28.2.2-1~debian.12~bookworm) is installed and not "
        "answering: starting it with systemd (systemctl start docker)"
    )
    assert _would(result.stdout) == ["systemctl-start docker", "wait-docker"]
    assert {"docker-ce", "docker.io", "moby-engine", "podman"} <= _asked_about(machine)
    assert not [line for line in machine.asked if line.startswith("apt-get")]


def test_docker_ce_without_systemd_starts_dockerd_by_hand(machine: Machine) -> None:
    machine.install(docker_ce="5:28.2.2-1~debian.12~bookworm")
    result = machine.setup()
    assert "starting dockerd (PID 1 is not systemd" in _engine_line(result.stdout)
    assert _would(result.stdout) == ["dockerd", "wait-docker"]
    assert not [line for line in machine.asked if line.startswith(("apt-get", "systemctl"))]


def test_podman_only_is_used_and_no_docker_is_installed(machine: Machine) -> None:
    machine.install(podman="4.3.1+ds1-8+deb12u1+b3")
    result = machine.setup()
    assert result.returncode == 0, result.stderr
    assert _engine_line(result.stdout) == (
        "setup: engine: Podman (podman 4.3.1+ds1-8+deb12u1+b3) and no Docker: flowtrace uses "
        "Podman (flowtrace asks its API, started for each command when nothing serves it); "
        "no Docker is installed"
    )
    assert _would(result.stdout) == []
    assert not [line for line in machine.asked if line.startswith("apt-get")]


def test_podman_only_with_systemd_starts_its_api_socket(machine: Machine) -> None:
    machine.install(podman="4.3.1+ds1-8+deb12u1+b3")
    machine.pid1("systemd")
    result = machine.setup()
    assert "systemctl start podman.socket" in _engine_line(result.stdout)
    assert _would(result.stdout) == ["systemctl-start podman.socket"]


def test_nothing_installed_installs_debians_docker_io_after_a_dry_run(machine: Machine) -> None:
    result = machine.setup()
    assert result.returncode == 0, result.stderr
    assert _engine_line(result.stdout) == (
        "setup: engine: none installed or answering: installing Debian's docker.io, started "
        "as dockerd (PID 1 is not systemd; log: /var/log/flowtrace-dockerd.log)"
    )
    assert _would(result.stdout) == ["install docker.io", "dockerd", "wait-docker"]
    assert [line for line in machine.asked if line.startswith("apt-get")] == [
        "apt-get -s install -y docker.io"
    ]


def test_an_install_that_would_remove_a_package_is_refused_in_one_line(
    machine: Machine,
) -> None:
    machine.apt_would_remove("docker-ce-cli")
    result = machine.setup()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "setup: error: not installing docker.io: apt-get would remove docker-ce-cli "
        "(flowtrace never removes or replaces a package)"
    ]
    assert "engine:" not in result.stdout


@pytest.mark.usefixtures("answering_socket")
def test_an_engine_answering_with_no_package_is_used_as_it_is(machine: Machine) -> None:
    result = machine.setup()
    assert result.returncode == 0, result.stderr
    line = _engine_line(result.stdout)
    assert line.startswith(
        f"setup: engine: Docker 28.2.2 answering on {machine.root / 'docker.sock'} "
        "(from no Docker package: installed by other means): used as it is, nothing installed"
    )
    assert _would(result.stdout) == []
    assert not [line for line in machine.asked if line.startswith(("apt-get", "systemctl"))]


@pytest.mark.usefixtures("answering_socket")
def test_both_engines_installed_docker_answering(machine: Machine) -> None:
    machine.install(docker_io="20.10.24+dfsg1-1+deb12u1+b6", podman="4.3.1+ds1-8+deb12u1+b3")
    result = machine.setup()
    line = _engine_line(result.stdout)
    assert "(docker.io 20.10.24+dfsg1-1+deb12u1+b6): used as it is, nothing installed" in line
    assert line.endswith(
        "Podman (podman 4.3.1+ds1-8+deb12u1+b3) is installed too: flowtrace uses it with "
        "--engine podman"
    )
    assert _would(result.stdout) == []


def test_for_the_tests_podman_is_installed_where_it_is_missing(machine: Machine) -> None:
    machine.install(docker_io="20.10.24+dfsg1-1+deb12u1+b6", netavark="1.4.0-3")
    machine.pid1("systemd")
    result = machine.setup("--for-tests")
    assert result.returncode == 0, result.stderr
    assert _would(result.stdout) == [
        "systemctl-start docker",
        "wait-docker",
        "install podman aardvark-dns slirp4netns uidmap",
    ]
    assert "apt-get -s install -y podman aardvark-dns slirp4netns uidmap" in machine.asked
