"""`flowtrace capture` on the real lab: every packet of a known burst at every point, Ctrl-C.

The traffic is UDP sent from c1's namespace to c2 with a socket flowtrace's own
run_in_netns opens there, to a port chosen per test, and every capture filters on that
port: other test sessions use the same lab at the same time, and their packets must
not count.  Nothing listens on the port (c2 answers with ICMP errors the filter leaves
out), so each datagram crosses the path once: c1/eth0, c1's veth peer, docker0, c2's
veth peer, c2/eth0.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flowtrace.api import capture
from flowtrace.endpoints.netns import run_in_netns
from flowtrace.errors import ExitStatus
from flowtrace.lab import LabState
from flowtrace.model import Point

pytestmark = pytest.mark.integration

FLOWTRACE = [sys.executable, "-m", "flowtrace"]
PATH_POINTS = 5  # c1/eth0, veth, docker0, veth, c2/eth0
WARM_UP_PORT = 9  # discard: the first datagram resolves ARP before any counted one


def free_port() -> int:
    return 20000 + secrets.randbelow(30000)


def send_burst(netns: str, dst_ip: str, port: int, count: int, pause_every: int = 0) -> int:
    """Send `count` numbered datagrams from inside `netns`; return how many the kernel took."""

    def body() -> int:
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"warm-up", (dst_ip, WARM_UP_PORT))
            time.sleep(0.05)
            for number in range(count):
                try:
                    sock.sendto(number.to_bytes(4, "big") * 8, (dst_ip, port))
                    sent += 1
                except OSError:  # ENOBUFS: the datagram never left, so no point sees it
                    continue
                if pause_every and number % pause_every == pause_every - 1:
                    time.sleep(0.001)
        return sent

    return run_in_netns(netns, body)


def c1_netns_and_c2_ip(lab: LabState) -> tuple[str, str]:
    c1, c2 = lab.container("c1"), lab.container("c2")
    assert c1.netns and c2.ip, "the lab's c1 and c2 must run"
    return c1.netns, c2.ip


def start_cli_capture(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], list[str]]:
    """Start `flowtrace capture ARGS` and return once it says every point is capturing."""
    process = subprocess.Popen(
        [*FLOWTRACE, "capture", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
        env=env,
    )
    assert process.stderr is not None
    said: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        said.append(line.rstrip())
        if line.startswith("writing "):
            return process, said
    process.kill()
    out, err = process.communicate()
    pytest.fail(f"capture never got ready: {said} {out} {err}")


def test_every_datagram_of_a_burst_at_every_point(lab_now: LabState, tmp_path: Path) -> None:
    netns, c2_ip = c1_netns_and_c2_ip(lab_now)
    port, burst = free_port(), 3000
    sent: list[int] = []

    def on_ready(points: list[Point], folder: Path) -> None:
        sent.append(send_burst(netns, c2_ip, port, burst))

    result = capture(
        "c1",
        "c2",
        filter_expr=f"udp and dst port {port}",
        count=PATH_POINTS * burst,
        duration=30,
        output_dir=tmp_path / "set",
        on_ready=on_ready,
    )
    assert sent == [burst]
    assert len(result.points) == PATH_POINTS
    assert [(s.packets, s.drops) for s in result.stats] == [(burst, 0)] * PATH_POINTS
    assert not result.interrupted and result.trimmed == 0
    manifest = json.loads((result.directory / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["interrupted"] is False
    assert [p["packets"] for p in manifest["points"]] == [burst] * PATH_POINTS

    from flowtrace.analyze import analyze

    analysis = analyze(result.directory, keep_packets=False)
    assert analysis.packet_count == burst and analysis.undecoded == 0
    request_hops = [hop for hop in analysis.hops if hop[0] == "request"]
    assert [analysis.hops[hop].count for hop in request_hops] == [burst] * (PATH_POINTS - 1)
    assert [(a, b) for _, _, a, b in request_hops] == [
        (p.id, q.id) for p, q in zip(result.points, result.points[1:], strict=False)
    ]


def test_sigint_mid_burst_leaves_a_whole_set(lab_now: LabState, tmp_path: Path) -> None:
    netns, c2_ip = c1_netns_and_c2_ip(lab_now)
    port, folder = free_port(), tmp_path / "set"
    process, said = start_cli_capture(
        "c1", "c2", "-f", f"udp and dst port {port}", "-o", str(folder)
    )
    assert said[0].startswith("capturing matching") and "c1/eth0" in said[0]
    burst = threading.Thread(target=send_burst, args=(netns, c2_ip, port, 20000, 20))
    burst.start()
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    burst.join()
    assert process.returncode == ExitStatus.INTERRUPTED, err
    assert "(interrupted)" in out and f"pcap set: {folder}/" in out
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["interrupted"] is True
    recorded = {s["point"]: s["packets"] for s in manifest["stats"]}
    assert len(recorded) == PATH_POINTS and min(recorded.values()) > 0
    assert max(recorded.values()) < 20000, "the burst ended before Ctrl-C: not a mid-burst stop"
    assert all(s["drops"] == 0 for s in manifest["stats"])
    tshark = subprocess.run(
        [
            "tshark",
            "-r",
            str(folder / "capture.pcapng"),
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
        ],
        capture_output=True,
        text=True,
    )
    assert tshark.returncode == 0 and "cut short" not in tshark.stderr, tshark.stderr
    seen: dict[str, int] = {}
    for name in tshark.stdout.split():
        seen[name] = seen.get(name, 0) + 1
    assert seen == recorded


def test_count_stops_after_exactly_that_many_packets(lab_now: LabState, tmp_path: Path) -> None:
    netns, c2_ip = c1_netns_and_c2_ip(lab_now)
    port, folder = free_port(), tmp_path / "set"
    process, _ = start_cli_capture(
        "--point", "c1/eth0", "--point", "host/docker0",
        "-f", f"udp and dst port {port}", "-n", "25", "-o", str(folder),
    )  # fmt: skip
    send_burst(netns, c2_ip, port, 200)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "25 packets on 2 points" in out and "stopped after 25 packets" in out
    count = subprocess.run(
        ["tshark", "-r", str(folder / "capture.pcapng"), "-T", "fields", "-e", "udp.dstport"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert count == [str(port)] * 25
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sum(s["packets"] for s in manifest["stats"]) == 25


def test_the_pure_python_path_captures_the_same_and_says_so_once(
    lab_now: LabState, tmp_path: Path
) -> None:
    # What a machine without a compiler runs (FLOWTRACE_NATIVE=0 forces it here).
    netns, c2_ip = c1_netns_and_c2_ip(lab_now)
    port, folder, burst = free_port(), tmp_path / "set", 500
    env = {**os.environ, "FLOWTRACE_NATIVE": "0"}
    process, said = start_cli_capture(
        "--point", "c1/eth0", "--point", "host/docker0",
        "-f", f"udp and dst port {port}", "-n", str(2 * burst), "-d", "20", "-o", str(folder),
        env=env,
    )  # fmt: skip
    send_burst(netns, c2_ip, port, burst)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    note = "flowtrace: note: FLOWTRACE_NATIVE=0 chose the pure-Python capture path"
    assert (said + err.splitlines()).count(note) == 1
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [(s["packets"], s["drops"]) for s in manifest["stats"]] == [(burst, 0)] * 2


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["c1", "c2", "-f", "udp and", "-d", "1"], ExitStatus.USAGE, "bad filter"),
        (["--point", "nosuchcontainer/eth0", "-d", "1"], ExitStatus.NOT_FOUND, "no container"),
        (["--point", "c1/eth7", "-d", "1"], ExitStatus.NOT_FOUND, "no interface 'eth7'"),
        (["c1", "c2", "-d", "0"], ExitStatus.USAGE, "bad duration 0"),
        ([], ExitStatus.USAGE, "nothing to capture"),
    ],
)
def test_bad_input_is_one_line_and_a_status(
    lab: LabState, tmp_path: Path, args: list[str], status: ExitStatus, words: str
) -> None:
    result = subprocess.run(
        [*FLOWTRACE, "capture", *args, "-o", str(tmp_path / "set")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowtrace: ") and words in lines[0], lines
    assert not (tmp_path / "set").exists()  # a capture that never started leaves nothing


def test_output_folder_holding_a_set_is_refused(lab: LabState, tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    result = subprocess.run(
        [*FLOWTRACE, "capture", "--point", "c1/eth0", "-d", "1", "-o", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == ExitStatus.ERROR
    assert (
        result.stderr.strip()
        == f"flowtrace: {folder}: already holds captures; choose another folder"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]
