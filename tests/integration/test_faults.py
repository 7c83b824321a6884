"""Faults during a run, on the real engine and kernel: named as the cause, nothing lost.

Containers killed or removed mid-trace (Docker's events), an interface and a namespace
deleted mid-trace, a frozen engine (a private dockerd of the test's own, stopped with
SIGSTOP), a full disk (a 200 KiB tmpfs of the test's own), a read-only bind mount, a
set folder removed under a capture, and the sets' owner-only modes.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flowtrace import api
from flowtrace import lab as lab_module
from flowtrace.errors import ExitStatus
from flowtrace.lab import LabState

pytestmark = pytest.mark.integration

FLOWTRACE = [sys.executable, "-m", "flowtrace"]
REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> Any:
    return subprocess.run(
        [*FLOWTRACE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def sh(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


@dataclass
class Pair:
    """Two namespaces of the test's own joined by a veth: a = .225, b = .226."""

    a: str
    b: str
    link_a: str
    link_b: str

    @property
    def spec_a(self) -> str:
        return f"netns:{self.a}"

    @property
    def spec_b(self) -> str:
        return f"netns:{self.b}"


def make_pair() -> Pair:
    tag = secrets.token_hex(2)
    return Pair(f"ftf{tag}-a", f"ftf{tag}-b", f"ftf{tag}a", f"ftf{tag}b")


def build_pair(pair: Pair) -> None:
    sh("ip", "netns", "add", pair.a)
    sh("ip", "netns", "add", pair.b)
    sh("ip", "link", "add", pair.link_a, "netns", pair.a, "type", "veth", "peer", "name",
       pair.link_b, "netns", pair.b)  # fmt: skip
    for ns, link, address in ((pair.a, pair.link_a, "198.51.100.225/30"),
                              (pair.b, pair.link_b, "198.51.100.226/30")):  # fmt: skip
        sh("ip", "-n", ns, "addr", "add", address, "dev", link)
        sh("ip", "-n", ns, "link", "set", link, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def remove_namespaces(*names: str) -> None:
    for ns in names:  # a namespace's links go with it
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def pair() -> Iterator[Pair]:
    """Named first, then made: a failure half-way (or Ctrl-C, SIGTERM) removes what was."""
    made = make_pair()
    try:
        build_pair(made)
        yield made
    finally:
        remove_namespaces(made.a, made.b)


@pytest.fixture
def containers(lab: LabState) -> Iterator[Any]:
    """Containers of the lab image made by this test (ftf- names), removed afterwards
    by name (one whose start failed after its creation too)."""
    import docker

    client = docker.from_env()
    names: list[str] = []

    def make() -> Any:
        name = f"ftf-{secrets.token_hex(3)}"
        names.append(name)
        return client.containers.run(
            lab_module.IMAGE, ["sleep", "600"], name=name, detach=True,
            labels={"flowtrace.test": "1"},
        )  # fmt: skip

    try:
        yield make
    finally:
        for name in names:
            with contextlib.suppress(docker.errors.NotFound):  # a test removed it itself
                client.containers.get(name).remove(force=True)
        client.close()


def test_a_container_killed_mid_trace_is_named_as_the_cause(
    containers: Any, tmp_path: Path
) -> None:
    src, dst = containers(), containers()
    killed_after = 3

    def on_probe(seq: int) -> None:
        if seq == killed_after - 1:
            dst.kill()  # SIGKILL: the engine reports die with exit code 137

    trace = api.trace(
        src.name, dst.name, count=7, interval=0.2, timeout=0.5,
        output_dir=tmp_path / "set", on_probe=on_probe,
    )  # fmt: skip
    outcomes = [v.outcome for v in trace.verdicts]
    assert outcomes[:killed_after] == ["replied"] * killed_after, outcomes
    lost = trace.verdicts[killed_after:]
    assert lost and all(v.outcome == "lost" for v in lost), outcomes
    for v in lost:
        assert v.fault is not None and v.fault.kind == "container-stopped"
        assert v.fault.subject == dst.name and v.fault.exit_code == 137
        assert str(v).startswith(f"lost: {dst.name} stopped at "), str(v)
        assert "(exit 137, after SIGKILL)" in v.detail and "lost after" not in str(v)
    assert "its veth went away" in lost[0].detail
    kinds = [f.kind for f in trace.faults]
    assert "container-stopped" in kinds and "interface-gone" in kinds
    manifest = json.loads((tmp_path / "set/manifest.json").read_text())
    assert [f["kind"] for f in manifest["faults"]] == kinds
    assert manifest["verdicts"][-1]["fault"]["exit_code"] == 137
    loaded = api.load(tmp_path / "set")
    assert [str(v) for v in loaded.verdicts] == [str(v) for v in trace.verdicts]
    assert loaded.faults == trace.faults


def test_a_container_removed_mid_trace_says_so_in_the_json(containers: Any) -> None:
    src, dst = containers(), containers()

    def on_probe(seq: int) -> None:
        if seq == 1:
            dst.remove(force=True)

    result = run_cli("ping", src.name, dst.name, "-c", "2", "--no-record", "--json")
    assert result.returncode == 0  # a warm-up: both answer
    trace = api.trace(src.name, dst.name, count=5, interval=0.2, timeout=0.5, record=False,
                      on_probe=on_probe)  # fmt: skip
    from flowtrace.output.jsonout import trace_dict

    document = json.loads(json.dumps(trace_dict(trace), default=str))
    kinds = {f["kind"] for f in document["faults"]}
    assert {"container-stopped", "container-removed"} <= kinds, kinds
    last = document["verdict"]["probes"][-1]
    assert last["outcome"] == "lost" and last["fault"]["subject"] == dst.name


def test_an_interface_deleted_mid_trace_is_the_cause(pair: Pair) -> None:
    def on_probe(seq: int) -> None:
        if seq == 1:
            sh("ip", "-n", pair.b, "link", "del", pair.link_b)

    trace = api.trace(pair.spec_a, pair.spec_b, count=5, interval=0.1, timeout=0.4,
                      record=False, on_probe=on_probe)  # fmt: skip
    assert [v.outcome for v in trace.verdicts[:2]] == ["replied", "replied"]
    gone = [f for f in trace.faults if f.kind == "interface-gone"]
    # deleting one end deletes the pair; under load a ring may see it only after the
    # trace's last probe, so at least one end is named, and only these two
    ends = {f"{pair.a}/{pair.link_a}", f"{pair.b}/{pair.link_b}"}
    assert gone and {f.subject for f in gone} <= ends, [f.subject for f in gone]
    for v in trace.verdicts[2:]:
        assert v.outcome == "lost" and v.fault is not None, str(v)
        assert "went away" in v.detail and "lost after" not in str(v)


def test_a_namespace_deleted_mid_trace_is_listed(pair: Pair) -> None:
    def on_probe(seq: int) -> None:
        if seq == 1:
            sh("ip", "netns", "del", pair.b)

    trace = api.trace(pair.spec_a, pair.spec_b, count=4, interval=0.1, timeout=0.4,
                      record=False, on_probe=on_probe)  # fmt: skip
    (fault,) = [f for f in trace.faults if f.kind == "netns-gone"]
    assert fault.subject == pair.b
    assert f"namespace {pair.b} (/run/netns/{pair.b}) was deleted" in fault.text
    # flowtrace's own sockets keep the namespace alive until the trace ends: still answered
    assert all(v.outcome == "replied" for v in trace.verdicts), [str(v) for v in trace.verdicts]


@pytest.fixture
def frozen_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private dockerd of this test's own (no bridge, no iptables, no containers), frozen.

    It runs in a network namespace of its own: a dockerd started with --bridge=none
    deletes the link named docker0 where it runs, which in the host's namespace is the
    machine's Docker bridge (this fixture did that once, without the namespace).
    """
    if shutil.which("dockerd") is None:
        pytest.skip("no dockerd")
    root = tmp_path_factory.mktemp("engine")
    (root / "daemon.json").write_text("{}")
    socket_path = root / "docker.sock"
    netns = f"ftf{secrets.token_hex(2)}-engine"
    process: subprocess.Popen[bytes] | None = None
    try:
        sh("ip", "netns", "add", netns)
        process = subprocess.Popen(
            ["ip", "netns", "exec", netns, "dockerd", "--data-root", str(root / "data"),
             "--exec-root", str(root / "exec"), "--pidfile", str(root / "docker.pid"),
             "-H", f"unix://{socket_path}", "--config-file", str(root / "daemon.json"),
             "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false",
             "--ip-masq=false"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert socket_path.exists(), "the private dockerd did not start"
        process.send_signal(signal.SIGSTOP)
        yield f"unix://{socket_path}"
    finally:
        if process is not None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        _kill_under(root)  # its containerd, if dockerd left it
        subprocess.run(["umount", "-R", str(root / "exec")], capture_output=True)
        subprocess.run(["umount", "-R", str(root / "data")], capture_output=True)
        remove_namespaces(netns)


def _kill_under(root: Path) -> None:
    """Processes whose command line names a path under root (a private dockerd's own)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(root).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def test_a_frozen_engine_is_one_line_after_a_bounded_wait(
    frozen_engine: str, pair: Pair, lab: LabState
) -> None:
    env = {"DOCKER_HOST": frozen_engine}
    started = time.monotonic()
    result = run_cli("ping", "c1", "c2", "--no-record", env=env, timeout=60)
    waited = time.monotonic() - started
    assert result.returncode == ExitStatus.NO_DOCKER, result.stderr
    assert "did not answer within 10 s" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and waited < 30
    started = time.monotonic()
    result = run_cli("ping", pair.spec_a, pair.spec_b, "--no-record", env=env)
    assert result.returncode == 0 and "replied" in result.stdout, result.stderr
    assert time.monotonic() - started < 10, "netns: endpoints need no engine"
    result = run_cli("ping", pair.spec_a, "198.51.100.226", "--no-record", env=env)
    assert result.returncode == 0, result.stderr  # found among the netns, after a short wait


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=200k", f"ftf-disk-{secrets.token_hex(2)}", str(mount))
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _flood(pair: Pair, seconds: float) -> subprocess.Popen[bytes]:
    """~1,000 pings a second of 200 bytes from a to b (busybox, inside the namespace)."""
    count = str(int(seconds * 1000))
    return subprocess.Popen(
        ["ip", "netns", "exec", pair.a, "busybox", "ping", "-q", "-i", "0.001", "-s", "200",
         "-c", count, "198.51.100.226"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _packets(pcapng: Path) -> int:
    out = subprocess.run(["capinfos", "-M", "-c", str(pcapng)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr  # capinfos finds no torn block
    return int(out.stdout.split("Number of packets:")[1].split()[0])


def test_a_full_disk_stops_a_capture_cleanly(pair: Pair, small_disk: Path) -> None:
    flood = _flood(pair, 20)
    try:
        result = run_cli("capture", "--point", f"{pair.spec_a}/{pair.link_a}", "--point",
                         f"{pair.spec_b}/{pair.link_b}", "-d", "15",
                         "-o", str(small_disk / "set"))  # fmt: skip
    finally:
        flood.kill()
        flood.wait()
    assert result.returncode == ExitStatus.WRITE_FAILED, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    held = _packets(small_disk / "set/capture.pcapng")
    assert f"no space left on device: the set holds {held:,} packets" in line
    assert f"capture.pcapng filled the 200 KiB tmpfs at {small_disk}" in line
    manifest = json.loads((small_disk / "set/manifest.json").read_text())
    assert manifest["complete"] is False and manifest["packets_in_set"] == held
    assert "no space left on device" in manifest["error"]


def test_a_full_disk_stops_a_trace_cleanly(pair: Pair, small_disk: Path) -> None:
    result = run_cli("ping", pair.spec_a, pair.spec_b, "-c", "400", "-i", "0.002",
                     "-o", str(small_disk / "set"))  # fmt: skip
    assert result.returncode == ExitStatus.WRITE_FAILED, result.stderr
    held = _packets(small_disk / "set/trace.pcapng")
    assert f"the set holds {held:,} packets and ends on a complete block" in result.stderr
    assert "answered" in result.stdout  # what was traced is still shown
    manifest = json.loads((small_disk / "set/manifest.json").read_text())
    assert manifest["complete"] is False and "no space left" in manifest["error"]
    assert api.load(small_disk / "set").packets  # and it reads back


def test_a_read_only_folder_is_refused_before_anything_is_sent(pair: Pair, tmp_path: Path) -> None:
    source, view = tmp_path / "rw", tmp_path / "ro"
    (source / "empty").mkdir(parents=True)
    view.mkdir()
    sh("mount", "--bind", str(source), str(view))
    try:
        sh("mount", "-o", "remount,ro,bind", str(view))
        for args in (("ping", pair.spec_a, pair.spec_b), ("capture", "--point",
                     f"{pair.spec_a}/{pair.link_a}", "-d", "1")):  # fmt: skip
            for folder in (view / "new", view / "empty"):
                result = run_cli(*args, "-o", str(folder))
                assert result.returncode == ExitStatus.WRITE_FAILED, result.stderr
                assert result.stderr.strip() == (
                    f"flowtrace: {folder}: cannot record a set there: the file system at {view} "
                    "is read-only; choose another -o folder, or --no-record"
                )
                assert "replied" not in result.stdout
    finally:
        subprocess.run(["umount", str(view)], capture_output=True)


def test_a_set_folder_removed_under_a_capture_is_made_again(pair: Pair, tmp_path: Path) -> None:
    folder = tmp_path / "set"
    flood = _flood(pair, 10)
    capture = subprocess.Popen(
        [*FLOWTRACE, "capture", "--point", f"{pair.spec_a}/{pair.link_a}", "-d", "8",
         "-o", str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (folder / "manifest.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        shutil.rmtree(folder)
        _, err = capture.communicate(timeout=30)
    finally:
        flood.kill()
        flood.wait()
        capture.kill()
    assert capture.returncode == ExitStatus.WRITE_FAILED, err
    assert "the set's folder was removed during the recording: flowtrace made it again" in err
    held = _packets(folder / "capture.pcapng")
    assert held > 0 and f"the set holds {held:,} packets" in err
    assert json.loads((folder / "manifest.json").read_text())["complete"] is False


def test_sets_are_owner_only_or_the_sudo_users(pair: Pair, tmp_path: Path) -> None:
    result = run_cli("ping", pair.spec_a, pair.spec_b, "-o", str(tmp_path / "mine"))
    assert result.returncode == 0, result.stderr
    for sudo, folder in (({}, "mine"), ({"SUDO_UID": "65534", "SUDO_GID": "65534"}, "theirs")):
        if sudo:
            result = run_cli("ping", pair.spec_a, pair.spec_b, "-o", str(tmp_path / folder),
                             env=sudo)  # fmt: skip
            assert result.returncode == 0, result.stderr
        owner = (65534, 65534) if sudo else (0, 0)
        info = os.stat(tmp_path / folder)
        assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (0o700, *owner)
        for name in ("trace.pcapng", "manifest.json"):
            info = os.stat(tmp_path / folder / name)
            assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (0o600, *owner), name
        assert sorted(os.listdir(tmp_path / folder)) == ["manifest.json", "trace.pcapng"]


# --- under load ---------------------------------------------------------------------------


@dataclass
class Bridged:
    """a, b, a generator g and its sink s, each on a port of br0 in the namespace br."""

    tag: str

    def ns(self, name: str) -> str:
        return f"ftf{self.tag}-{name}"

    @property
    def names(self) -> list[str]:
        return [self.ns(n) for n in ("a", "b", "g", "s", "br")]


def _mac(ns: str) -> str:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "eth0"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return str(json.loads(out)[0]["address"])


@pytest.fixture
def bridged() -> Iterator[Bridged]:
    if shutil.which("trafgen") is None:
        pytest.skip("no trafgen (Debian's netsniff-ng: bash scripts/setup.sh --for-tests)")
    made = Bridged(secrets.token_hex(2))
    try:
        for ns in made.names:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        br = made.ns("br")
        sh("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        for i, end in enumerate(("a", "b", "g", "s")):
            sh("ip", "-n", made.ns(end), "link", "add", "eth0", "type", "veth", "peer", "name",
               f"p{end}", "netns", br)  # fmt: skip
            sh("ip", "-n", br, "link", "set", f"p{end}", "master", "br0", "up")
            sh("ip", "-n", made.ns(end), "addr", "add", f"198.51.100.{241 + i}/28", "dev", "eth0")
            sh("ip", "-n", made.ns(end), "link", "set", "eth0", "up")
        sh("ip", "-n", br, "link", "set", "br0", "up")
        # the sink's port is known: the load crosses br0 to ps alone, as learned traffic does
        sh("bridge", "-n", br, "fdb", "replace", _mac(made.ns("s")), "dev", "ps", "master",
           "static")  # fmt: skip
        yield made
    finally:
        remove_namespaces(*made.names)


@contextlib.contextmanager
def load(bridged: Bridged, tmp_path: Path, pps: int) -> Iterator[int]:
    """UDP from g to s at `pps` (trafgen in g's namespace); yields the rate measured on
    the sink's port over one second."""
    config = tmp_path / "load.cfg"
    config.write_text(
        f"{{ eth(da={_mac(bridged.ns('s'))}, sa={_mac(bridged.ns('g'))}), "
        "ipv4(saddr=198.51.100.243, daddr=198.51.100.244, ttl=64), "
        "udp(sp=4000, dp=5000), fill(0x00, 64) }\n"
    )
    generator = subprocess.Popen(
        ["ip", "netns", "exec", bridged.ns("g"), "trafgen", "--dev", "eth0", "--conf",
         str(config), "-b", f"{pps}pps", "--cpus", "1", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:

        def sent() -> int:
            out = subprocess.run(["ip", "-n", bridged.ns("br"), "-j", "-s", "link", "show", "ps"],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            return int(json.loads(out)[0]["stats64"]["tx"]["packets"])

        time.sleep(1.0)
        assert generator.poll() is None, generator.stderr.read() if generator.stderr else ""
        first = sent()
        time.sleep(1.0)
        yield sent() - first
    finally:  # trafgen forks its workers: the whole group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(generator.pid, signal.SIGKILL)
        generator.wait()


def test_a_trace_on_a_bridge_carrying_100k_pps_finds_its_probes(
    bridged: Bridged, tmp_path: Path
) -> None:
    with load(bridged, tmp_path, 100_000) as rate:
        assert rate >= 90_000, f"the generator reached {rate:,} pps"
        trace = api.trace(f"netns:{bridged.ns('a')}", f"netns:{bridged.ns('b')}", count=10,
                          interval=0.1, timeout=1.0, output_dir=tmp_path / "set")  # fmt: skip
    assert f"{bridged.ns('br')}/br0" in [p.id for p in trace.points]
    assert [v.outcome for v in trace.verdicts] == ["replied"] * 10, [str(v) for v in trace.verdicts]
    manifest = json.loads((tmp_path / "set/manifest.json").read_text())
    assert manifest["complete"] is True
    assert all(s["drops"] == 0 for s in manifest["stats"]), manifest["stats"]


def test_a_capture_that_cannot_keep_up_reports_its_kernel_drops(
    bridged: Bridged, tmp_path: Path
) -> None:
    folder = tmp_path / "set"
    point = f"netns:{bridged.ns('br')}/ps"
    with load(bridged, tmp_path, 200_000) as rate:
        assert rate >= 100_000, f"the generator reached {rate:,} pps"
        capture = subprocess.Popen(
            [*FLOWTRACE, "capture", "--point", point, "-d", "8", "-o", str(folder)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while not (folder / "manifest.json").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            # a reader that falls behind: frozen for 3 s, over 300,000 packets against a
            # ring of 32 MiB (about 200,000 of these)
            os.killpg(capture.pid, signal.SIGSTOP)
            time.sleep(3)
            os.killpg(capture.pid, signal.SIGCONT)
            out, err = capture.communicate(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(capture.pid, signal.SIGCONT)
                os.killpg(capture.pid, signal.SIGKILL)
            capture.wait()
    manifest = json.loads((folder / "manifest.json").read_text())
    (stats,) = manifest["stats"]
    assert stats["point"] == point.removeprefix("netns:") and stats["drops"] > 10_000, stats
    assert manifest["complete"] is False
    assert f"{stats['point']} ({stats['drops']:,})" in manifest["incomplete"]
    assert f"{stats['drops']:,} dropped by the kernel" in out, out + err
    assert "warning: the kernel dropped packets" in out
