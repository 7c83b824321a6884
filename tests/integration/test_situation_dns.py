"""Names on Docker networks, on the real engine: `flowtrace dns` through Docker's embedded
DNS on a user-defined network (its DNAT inside the container's namespace, dockerd's
socket, the answer), the default bridge where there is none, and /etc/hosts.

Only names Docker itself answers are looked up: the embedded DNS forwards any other name
to the host's resolvers, which are outside what the tests may reach.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from test_trace import FLOWTRACE, run_cli, tshark_fields

from flowtrace import api
from flowtrace.errors import ExitStatus
from flowtrace.lab import LabState

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client() -> Any:
    return docker.from_env()


def _address(client: Any, name: str, network: str) -> str:
    attrs = client.api.inspect_container(name)
    return str(attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


def _embedded_dns_ports(client: Any, name: str) -> dict[str, int]:
    """The ports dockerd's DNAT rules send 127.0.0.11:53 to, read with iptables-save."""
    pid = client.api.inspect_container(name)["State"]["Pid"]
    rules = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "iptables-save", "-t", "nat"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.findall(
        r"-p (udp|tcp) .*--dport 53 -j DNAT --to-destination 127\.0\.0\.11:(\d+)", rules
    )
    return {proto: int(port) for proto, port in found}


def _dockerd_pid() -> int:
    """The host's dockerd: the one in this network namespace (the hosts scenario runs more)."""
    out = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True, check=True)
    ours = os.readlink("/proc/self/ns/net")
    pids = [int(pid) for pid in out.stdout.split()]
    return next(pid for pid in pids if os.readlink(f"/proc/{pid}/ns/net") == ours)


def _one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_lookup_on_a_user_network_goes_through_the_embedded_dns_dnat(
    lab: LabState, client: Any, tmp_path: Path
) -> None:
    out = tmp_path / "set"
    result = run_cli("dns", "c3", "c4", "--json", "-o", str(out))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    c4_ip = _address(client, "c4", "ftlab")
    udp_port = _embedded_dns_ports(client, "c3")["udp"]

    assert doc["server"] == "127.0.0.11" and doc["nameservers"] == ["127.0.0.11"]
    assert doc["rcode"] == "NOERROR"
    assert any(rec.endswith(f"IN A {c4_ip}") for rec in doc["records"]), doc["records"]
    assert [p["id"] for p in doc["points"]] == ["c3/lo"]

    query_nat, answer_nat = doc["nat"]
    assert query_nat["kind"] == "DNAT" and query_nat["reverse_of"] is None
    dns_port = {"ip": "127.0.0.11", "port": 53}
    dockerd_port = {"ip": "127.0.0.11", "port": udp_port}
    assert (query_nat["before"], query_nat["after"]) == (dns_port, dockerd_port)
    assert query_nat["rule"] == (
        "-A DOCKER_OUTPUT -d 127.0.0.11/32 -p udp -m udp --dport 53 -j DNAT "
        f"--to-destination 127.0.0.11:{udp_port}"
    )
    sport = int(doc["sent_from"].rsplit(":", 1)[1])
    assert f"sport={sport} dport=53" in query_nat["conntrack"]
    assert f"sport={udp_port} dport={sport}" in query_nat["conntrack"]
    assert answer_nat["kind"] == "SNAT" and answer_nat["reverse_of"] == "DNAT"
    assert (answer_nat["before"], answer_nat["after"]) == (dockerd_port, dns_port)

    assert doc["server_socket"] == f"127.0.0.11:{udp_port}"
    assert doc["server_process"] == f"dockerd (pid {_dockerd_pid()})"

    # on lo each packet is seen going out and coming in; the query after the DNAT,
    # the answer after conntrack put its source back
    query, answer = doc["packets"]
    assert query["direction"] == "request" and answer["direction"] == "reply"
    assert [s["point"] for s in query["sightings"]] == ["c3/lo", "c3/lo"]
    assert {s["dst"] for s in query["sightings"]} == {"127.0.0.11"}
    assert {s["dport"] for s in query["sightings"]} == {udp_port}
    assert {s["sport"] for s in answer["sightings"]} == {53}

    rows = tshark_fields(
        out / "trace.pcapng", "frame.interface_name", "frame.packet_id", "udp.dstport"
    )
    assert rows == [
        ["c3/lo", "1", str(udp_port)],
        ["c3/lo", "1", str(udp_port)],
        ["c3/lo", "2", str(sport)],
        ["c3/lo", "2", str(sport)],
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "dns" and manifest["complete"] is True
    assert manifest["dns"]["records"] == doc["records"]

    # offline: load() puts back the rewrites no two sightings show, from the manifest
    loaded = api.load(out)
    first, second = loaded.packets
    assert [ev.kind for ev in first.nat] == ["DNAT"] and first.direction == "request"
    assert first.nat[0].rule == query_nat["rule"]
    assert [ev.reverse_of for ev in second.nat] == ["DNAT"] and second.direction == "reply"


def test_the_name_resolved_is_the_address_ping_by_name_uses(lab: LabState) -> None:
    lookup = run_cli("dns", "c3", "c4", "--json", "--no-record")
    ping = run_cli("ping", "c3", "c4", "--json", "--no-record")
    assert lookup.returncode == 0 and ping.returncode == 0, (lookup.stderr, ping.stderr)
    address = json.loads(ping.stdout)["meta"]["dst_ip"]
    assert any(r.endswith(f"IN A {address}") for r in json.loads(lookup.stdout)["records"])


def test_terminal_output_names_rule_process_and_answer(lab: LabState, client: Any) -> None:
    result = run_cli("dns", "c4", "c3", "--no-record")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "resolver: 127.0.0.11:53 (c4's /etc/resolv.conf: 127.0.0.11)" in text
    assert "query: DNAT 127.0.0.11:53 -> 127.0.0.11:" in text
    assert "rule: -A DOCKER_OUTPUT -d 127.0.0.11/32 -p udp" in text
    assert "a socket of dockerd (pid" in text
    assert f"IN A {_address(client, 'c3', 'ftlab')}" in text
    assert "Docker's embedded DNS" in text


def test_default_bridge_has_no_embedded_dns(lab: LabState, client: Any) -> None:
    line = _one_line_error(run_cli("dns", "c1", "c2"), ExitStatus.NO_PATH)
    assert "c1 is on the default bridge, where Docker runs no embedded DNS" in line
    assert f"c2 is at {_address(client, 'c2', 'bridge')} on bridge" in line
    assert "flowtrace sends nothing outside its namespaces" in line


def test_own_name_is_answered_from_etc_hosts(lab: LabState, client: Any) -> None:
    result = run_cli("dns", "c3", "c3", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["hosts_answer"] == _address(client, "c3", "ftlab")
    assert doc["packets"] == [] and doc["pcap"] is None
    assert "sends no packet" in doc["notes"][0]


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (("c3", "c4", "-t", "BOGUS"), ExitStatus.USAGE, "bad record type"),
        (("c3", "bad..name"), ExitStatus.USAGE, "bad name"),
        (("no-such-container", "c4"), ExitStatus.NOT_FOUND, "no container named"),
        (("c3", "c4", "--server", "not-an-ip"), ExitStatus.USAGE, "bad server"),
        (("c3", "c4", "--server", "198.51.100.200"), ExitStatus.NO_PATH, "no namespace"),
    ],
)
def test_bad_input_is_one_line(
    lab: LabState, args: tuple[str, ...], status: int, words: str
) -> None:
    assert words in _one_line_error(run_cli("dns", *args, "--no-record"), status)


@pytest.fixture
def outside_dns_server(lab: LabState) -> Iterator[str]:
    """A DNS server on the outside host (ft-outside, 203.0.113.2:53/udp), run by this test
    process: it answers every A question with 203.0.113.2."""
    import dns.message
    import dns.rrset

    from flowtrace.endpoints.netns import run_in_netns

    def bound() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((lab.outside.ip, 53))
        return sock

    sock = run_in_netns(lab.outside.netns_path, bound)
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            answer = dns.message.make_response(query)
            name = query.question[0].name
            answer.answer.append(dns.rrset.from_text(name, 60, "IN", "A", lab.outside.ip))
            sock.sendto(answer.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield lab.outside.ip
    finally:
        stop.set()
        thread.join()
        sock.close()


def test_lookup_across_namespaces_shows_the_masquerade_and_the_server_process(
    outside_dns_server: str,
) -> None:
    result = run_cli(
        "dns", "c1", "web.lab.test", "--server", outside_dns_server, "--json", "--no-record"
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    points = [p["id"] for p in doc["points"]]
    assert points[0] == "c1/eth0" and points[-1] == "ft-outside/eth0"
    assert "host/docker0" in points and "host/ft-uplink" in points
    assert doc["records"] == [f"web.lab.test. 60 IN A {outside_dns_server}"]
    with open("/proc/self/comm") as f:
        me = f.read().strip()
    assert doc["server_process"] == f"{me} (pid {os.getpid()})"
    assert doc["server_socket"] == f"{outside_dns_server}:53"
    query, answer = doc["packets"]
    assert [s["point"] for s in query["sightings"]] == points
    assert [s["point"] for s in answer["sightings"]] == points[::-1]
    (snat,) = query["nat"]
    assert snat["kind"] == "SNAT" and snat["between"] == ["host/docker0", "host/ft-uplink"]
    assert snat["rule"] == "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
    (undo,) = answer["nat"]
    assert undo["reverse_of"] == "SNAT"
    assert doc["nat"] == []  # nothing rewritten between the socket and c1/eth0


def test_a_server_nobody_runs_is_refused_by_icmp(lab: LabState) -> None:
    result = run_cli(
        "dns", "c1", "web.lab.test", "--server", lab.outside.ip, "--json", "--no-record"
    )
    assert result.returncode == ExitStatus.NO_REPLY, result.stderr
    doc = json.loads(result.stdout)
    assert doc["rcode"] is None and doc["records"] == []
    assert doc["error"] == (
        f"ICMP port unreachable (type 3 code 3) from {lab.outside.ip}: "
        f"nothing listens on {lab.outside.ip}:53/udp"
    )
    assert doc["server_process"] is None
    error = doc["packets"][1]
    assert error["direction"] == "reply" and error["sightings"][-1]["point"] == "c1/eth0"


def test_ctrl_c_while_waiting_keeps_the_query(lab: LabState, tmp_path: Path) -> None:
    """A server that never answers (a socket nobody reads, in ft-outside); SIGINT mid-wait."""
    import signal
    import time

    from flowtrace.endpoints.netns import run_in_netns

    def bound() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((lab.outside.ip, 53))
        return sock

    silent = run_in_netns(lab.outside.netns_path, bound)
    out = tmp_path / "set"
    try:
        proc = subprocess.Popen(
            [*FLOWTRACE, "dns", "c1", "web.lab.test", "--server", lab.outside.ip,
             "--timeout", "30", "-o", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[2],
        )  # fmt: skip
        silent.settimeout(20)
        silent.recvfrom(4096)  # the query arrived: flowtrace now waits for an answer
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        silent.close()
    assert proc.returncode == ExitStatus.INTERRUPTED, stderr
    assert "Traceback" not in stderr
    assert "interrupted before the answer came" in stdout and "pcap set:" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["interrupted"] is True and manifest["complete"] is True
    rows = tshark_fields(out / "trace.pcapng", "frame.interface_name", "udp.dstport")
    assert rows[0][0] == "c1/eth0" and rows[-1] == ["ft-outside/eth0", "53"]
    assert len(rows) == 5  # the query at each of the five points, nothing else
