"""conntrack lookup and NAT rule attribution on a private three-namespace topology.

    ftct-<id>-a  a0 198.51.100.2/24 (default via .1)
                  |
    ftct-<id>-r  ra 198.51.100.1/24, rb 203.0.113.1/24: ip_forward, MASQUERADE out of rb
                  |
    ftct-<id>-b  b0 203.0.113.2/24

b has no route back to 198.51.100.0/24, so a reaches b only through r's MASQUERADE.
The addresses and the rule exist inside these namespaces only: the veths are created
in them directly and nothing touches the host's routes or rules.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from flowtrace.endpoints.netns import run_in_netns
from flowtrace.model import Address, NatEvent
from flowtrace.topology.conntrack import find_entry
from flowtrace.topology.netfilter import attribute, read_ruleset

pytestmark = pytest.mark.integration

MASQUERADE = "-A POSTROUTING -s 198.51.100.0/24 -o rb -j MASQUERADE"


@dataclass(frozen=True)
class Topology:
    a: str
    r: str
    b: str

    def path(self, name: str) -> str:
        return f"/run/netns/{name}"


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def topology() -> Iterator[Topology]:
    if shutil.which("busybox") is None:
        pytest.skip("busybox (busybox-static) is needed to ping")
    prefix = f"ftct-{uuid.uuid4().hex[:6]}"
    topo = Topology(f"{prefix}-a", f"{prefix}-r", f"{prefix}-b")
    made: list[str] = []
    try:
        for name in (topo.a, topo.r, topo.b):
            sh("ip", "netns", "add", name)
            made.append(name)
        sh(
            "ip",
            "-n",
            topo.a,
            "link",
            "add",
            "a0",
            "type",
            "veth",
            "peer",
            "name",
            "ra",
            "netns",
            topo.r,
        )
        sh(
            "ip",
            "-n",
            topo.b,
            "link",
            "add",
            "b0",
            "type",
            "veth",
            "peer",
            "name",
            "rb",
            "netns",
            topo.r,
        )
        for ns, dev, address in (
            (topo.a, "a0", "198.51.100.2/24"),
            (topo.r, "ra", "198.51.100.1/24"),
            (topo.r, "rb", "203.0.113.1/24"),
            (topo.b, "b0", "203.0.113.2/24"),
        ):
            sh("ip", "-n", ns, "addr", "add", address, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for ns in (topo.a, topo.r, topo.b):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", topo.a, "route", "add", "default", "via", "198.51.100.1")
        sh("ip", "netns", "exec", topo.r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "netns", "exec", topo.r, "iptables", "-t", "nat", *MASQUERADE.split())
        yield topo
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)
        left = sh("ip", "netns", "list")
        assert not any(name in left for name in made), left


def ping(topo: Topology) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", topo.a, "busybox", "ping", "-c", "1", "-W", "2", "203.0.113.2"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_ping_through_masquerade_has_an_entry_with_the_translated_reply(topology: Topology) -> None:
    ping(topology)
    entry = find_entry(topology.path(topology.r), "icmp", "198.51.100.2", "203.0.113.2")
    assert entry is not None
    assert entry.startswith("icmp     1 ")
    assert "src=198.51.100.2 dst=203.0.113.2 type=8 code=0 id=" in entry
    assert "src=203.0.113.2 dst=203.0.113.1 type=0 code=0 id=" in entry  # put back by r
    # The reply's view of the flow finds the same entry.
    assert find_entry(topology.path(topology.r), "icmp", "203.0.113.2", "203.0.113.1") == entry
    if shutil.which("conntrack"):
        listed = sh("ip", "netns", "exec", topology.r, "conntrack", "-L").splitlines()
        without_timeout = re.sub(r"^(\S+\s+\d+) \d+ ", r"\1 ", entry)
        assert without_timeout in [re.sub(r"^(\S+\s+\d+) \d+ ", r"\1 ", line) for line in listed]


def test_the_masquerade_rule_is_named_for_the_rewrite(topology: Topology) -> None:
    ping(topology)
    entry = find_entry(topology.path(topology.r), "icmp", "198.51.100.2", "203.0.113.2")
    assert entry is not None
    ident = int(re.search(r"type=0 code=0 id=(\d+)", entry).group(1))  # type: ignore[union-attr]
    ruleset = read_ruleset(topology.path(topology.r))
    assert [r.text for r in ruleset.rules("nat")] == [MASQUERADE]
    event = NatEvent(
        "SNAT",
        (f"{topology.r}/ra", f"{topology.r}/rb"),
        Address("198.51.100.2", ident),
        Address("203.0.113.1", ident),
    )
    rule = attribute(
        ruleset,
        event,
        "icmp",
        "ra",
        "rb",
        {"198.51.100.1", "203.0.113.1"},
        peer=Address("203.0.113.2"),
    )
    assert rule == MASQUERADE
    # The rule lives in r only: not in b, not in the namespace the tests run in.
    assert read_ruleset(topology.path(topology.b)).rules("nat") == []
    assert MASQUERADE not in [r.text for r in read_ruleset("/proc/self/ns/net").rules("nat")]


def test_udp_entry_is_found_by_its_ports_only(topology: Topology) -> None:
    sender = run_in_netns(
        topology.path(topology.a), socket.socket, socket.AF_INET, socket.SOCK_DGRAM
    )
    try:
        sender.bind(("198.51.100.2", 40123))
        sender.sendto(b"probe", ("203.0.113.2", 9))  # nobody listens: the entry stays unreplied
    finally:
        sender.close()
    r = topology.path(topology.r)
    entry = find_entry(r, "udp", "198.51.100.2", "203.0.113.2", 40123, 9)
    assert entry is not None
    assert "sport=40123 dport=9 [UNREPLIED] src=203.0.113.2 dst=203.0.113.1 sport=9" in entry
    assert find_entry(r, "udp", "198.51.100.2", "203.0.113.2", 40123, 10) is None
    assert find_entry(r, "tcp", "198.51.100.2", "203.0.113.2", 40123, 9) is None
    assert find_entry(topology.path(topology.b), "udp", "198.51.100.2", "203.0.113.2") is None
