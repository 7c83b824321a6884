"""scripts/lib/engine_ipv6.sh's decisions: on which engine setup.sh may set the daemon
options IPv6 NAT needs, run for real (bash sources the library) against a stand-in
machine: a folder for /var/lib/flowtrace and /etc/docker, a set-up log, PID 1's name in
a file, a stand-in dpkg-query on PATH, and a stand-in dockerd (a process whose command
line is a bare `dockerd`, writing to the log, its pid in a pid file).  The one place the
project uses stand-ins: what is tested is what the script decides to do to a machine.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[3] / "scripts" / "lib" / "engine_ipv6.sh"

DRIVER = """
set -euo pipefail
say() { printf 'setup: %s\\n' "$*"; }
die() { printf 'setup: error: %s\\n' "$*" >&2; exit 1; }
SETUP_LOG="$1"
DOCKERD_LOG="$2"
DOCKERD_WAIT_S=5
. "$3"
case "$4" in
installed) record_engine_installed docker.io ;;
running) adopt_engine ;;
esac
write_ipv6_options
echo "written=$ENGINE_OPTIONS_WRITTEN"
"""

FAKE_DPKG_QUERY = """#!/bin/sh
printf 'install ok installed 20.10.24+dfsg1-1+deb12u1+b6'
"""


@dataclass
class Machine:
    root: Path
    env: dict[str, str]
    dockerd: subprocess.Popen[bytes] | None = None

    @property
    def marker(self) -> Path:
        return self.root / "state" / "engine"

    @property
    def daemon_json(self) -> Path:
        return self.root / "etc-docker" / "daemon.json"

    @property
    def setup_log(self) -> Path:
        return self.root / "flowtrace-setup.log"

    @property
    def dockerd_log(self) -> Path:
        return self.root / "flowtrace-dockerd.log"

    def installed_by_setup(self) -> None:
        self.setup_log.write_text("Setting up docker.io (20.10.24+dfsg1-1+deb12u1+b6) ...\n")

    def start_dockerd(self, argv0: str = "dockerd", log: Path | None = None) -> None:
        """A process with `argv0` as its whole command line, its output in the log."""
        out = open(log or self.dockerd_log, "ab")  # noqa: SIM115 - the child holds it
        self.dockerd = subprocess.Popen(
            [argv0], executable="/bin/cat", stdin=subprocess.PIPE, stdout=out, stderr=out
        )
        out.close()
        (self.root / "docker.pid").write_text(f"{self.dockerd.pid}\n")

    def setup(self, how: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "bash",
                "-c",
                DRIVER,
                "driver",
                str(self.setup_log),
                str(self.dockerd_log),
                str(LIB),
                how,
            ],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
        )


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dpkg-query"
    fake.write_text(FAKE_DPKG_QUERY)
    fake.chmod(0o755)
    (tmp_path / "pid1").write_text("process_api\n")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "FLOWTRACE_SETUP_STATE_DIR": str(tmp_path / "state"),
        "FLOWTRACE_SETUP_DAEMON_JSON": str(tmp_path / "etc-docker" / "daemon.json"),
        "FLOWTRACE_SETUP_DOCKERD_PIDFILE": str(tmp_path / "docker.pid"),
        "FLOWTRACE_SETUP_PID1": str(tmp_path / "pid1"),
    }
    found = Machine(tmp_path, env)
    try:
        yield found
    finally:
        if found.dockerd is not None:
            found.dockerd.kill()
            found.dockerd.wait()


def options(path: Path) -> dict[str, object]:
    return dict(json.loads(path.read_text()))


def test_an_engine_setup_installed_gets_the_options_once(machine: Machine) -> None:
    done = machine.setup("installed")
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and done.stdout.strip().endswith("written=1")
    assert options(machine.daemon_json) == {"experimental": True, "ip6tables": True}
    marker = machine.marker.read_text()
    assert "installed=docker.io 20.10.24+dfsg1-1+deb12u1+b6" in marker
    digest = hashlib.sha256(machine.daemon_json.read_bytes()).hexdigest()
    assert f"daemon_json_sha256={digest}" in marker
    again = machine.setup("none")
    assert again.stdout.strip() == "written=0"  # already as it should be: nothing said


def test_an_engine_setup_started_before_the_marker_is_adopted(machine: Machine) -> None:
    machine.installed_by_setup()
    machine.start_dockerd()
    done = machine.setup("running")
    assert done.returncode == 0, done.stderr
    assert "dockerd: adopted as flowtrace's own" in done.stdout
    assert "adopted: in" in machine.marker.read_text()
    assert options(machine.daemon_json) == {"experimental": True, "ip6tables": True}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ("no_install_in_log", "shows no install of docker.io"),
        ("systemd", "PID 1 is systemd"),
        ("users_config", "exists: someone configured the engine"),
        ("not_running", "no dockerd runs"),
        ("arguments", "is not the bare `dockerd`"),
        ("other_log", "is not the bare `dockerd`"),
    ],
)
def test_an_engine_without_all_the_evidence_is_left_alone(
    machine: Machine, change: str, why: str
) -> None:
    if change != "no_install_in_log":
        machine.installed_by_setup()
    if change == "systemd":
        (machine.root / "pid1").write_text("systemd\n")
    if change == "users_config":
        machine.daemon_json.parent.mkdir()
        machine.daemon_json.write_text('{"log-level": "warn"}\n')
    if change == "arguments":
        machine.start_dockerd(argv0="dockerd --debug")
    elif change == "other_log":
        machine.start_dockerd(log=machine.root / "elsewhere.log")
    elif change != "not_running":
        machine.start_dockerd()
    done = machine.setup("running")
    assert done.returncode == 0, done.stderr
    assert "IPv6 NAT options left as they are" in done.stdout and why in done.stdout
    assert not machine.marker.exists()
    if change == "users_config":
        assert options(machine.daemon_json) == {"log-level": "warn"}
    else:
        assert not machine.daemon_json.exists()


def test_a_daemon_json_someone_changed_since_is_left_as_it_is(machine: Machine) -> None:
    assert machine.setup("installed").returncode == 0
    machine.daemon_json.write_text('{"experimental": true, "ip6tables": true, "debug": true}\n')
    done = machine.setup("none")
    assert "is not the one flowtrace wrote: left as it is" in done.stdout
    assert options(machine.daemon_json)["debug"] is True
