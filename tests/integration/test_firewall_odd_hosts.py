"""Odd hosts, for real: iptables-legacy next to iptables-nft, a rule flowtrace cannot
evaluate, rules that change while the probes are out, a reader that is missing.

Each test changes only the replica's own host namespace (ftfw-h), which goes away with
the replica; the same Docker 29.7 replica serves them all.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_trace import run_cli  # the CLI as a user runs it

from flowtrace import api
from flowtrace.lab import replica

pytestmark = pytest.mark.integration

OUT = "netns:ftfw-out"


@pytest.fixture(scope="module")
def docker29(root: None) -> Iterator[replica.Replica]:
    with replica.locked():
        try:
            yield replica.build("docker-29.7-iptables")
        finally:
            replica.remove()
            assert replica.present() == []


@pytest.fixture
def host_rules(docker29: replica.Replica) -> Iterator[None]:
    """The replica's rules put back after a test that changes them."""
    try:
        yield
    finally:
        _in_host(["iptables-legacy", "-F", "FORWARD"], check=False)
        _in_host(["nft", "delete", "table", "inet", "ftfwx"], check=False)
        replica.load_rules(docker29.engine)


def _in_host(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", replica.HOST, *argv], capture_output=True, text=True, check=check
    )


def test_iptables_legacy_and_nft_both_in_use(host_rules: None) -> None:
    _in_host(["iptables-legacy", "-A", "FORWARD", "-s", "10.247.0.3", "-j", "DROP"])
    trace = api.trace("netns:ftfw-c2", OUT, count=1, timeout=0.5, record=False)
    (verdict,) = trace.verdicts
    assert verdict.outcome == "lost"
    assert verdict.rule == "-A FORWARD -s 10.247.0.3/32 -j DROP"
    assert "filter chain FORWARD (iptables-legacy) from ftfw-d0 to ftfw-up" in verdict.detail
    doc = api.rules("netns:ftfw-c2", OUT)
    host = doc["request"]["namespaces"][1]
    assert host["backends"] == ["iptables-legacy", "iptables-nft"]
    assert any("iptables-legacy and iptables-nft both hold rules" in n for n in host["notes"])
    assert doc["request"]["outcome"]["rule"] == "-A FORWARD -s 10.247.0.3/32 -j DROP"


def test_a_rule_flowtrace_cannot_evaluate_is_never_named_as_certain(host_rules: None) -> None:
    # `ip dscp` is not in flowtrace's model: the kernel drops the probe (DSCP 0), flowtrace
    # can only say it maybe did.
    chain = "forwardx { type filter hook forward priority -5; }"
    _in_host(["nft", f"add table inet ftfwx; add chain inet ftfwx {chain}"])
    _in_host(["nft", "add rule inet ftfwx forwardx ip saddr 10.247.0.2 ip dscp cs0 drop"])
    trace = api.trace("netns:ftfw-c1", OUT, count=1, timeout=0.5, record=False)
    (verdict,) = trace.verdicts
    assert verdict.outcome == "lost"
    assert verdict.detail.startswith(
        "maybe dropped in ftfw-h by `table inet ftfwx chain forwardx handle "
    )
    assert "(maybe: flowtrace cannot evaluate `ip dscp cs0`)" in verdict.detail
    doc = api.rules("netns:ftfw-c1", OUT)
    outcome = doc["request"]["outcome"]  # `rules` predicts: it cannot tell, and says so
    assert outcome["outcome"] == "delivered" and not outcome["certain"]
    assert "unless `table inet ftfwx chain forwardx handle " in outcome["text"]
    assert outcome["text"].endswith(
        "(DROP) matched (maybe: flowtrace cannot evaluate `ip dscp cs0`)"
    )
    # from another network the rule's address does not fit: accepted, and certain
    other = api.rules("netns:ftfw-c3", OUT)["request"]["outcome"]
    assert other["outcome"] == "delivered" and other["certain"]


def test_rules_that_change_while_the_probes_are_out_are_a_note(
    docker29: replica.Replica, host_rules: None
) -> None:
    def change(seq: int) -> None:
        if seq == 0:
            _in_host(["iptables", "-I", "DOCKER-USER", "-s", "10.247.1.3", "-j", "DROP"])

    trace = api.trace("netns:ftfw-c1", OUT, count=2, interval=0.1, timeout=0.5, record=False,
                      on_probe=change)  # fmt: skip
    assert [v.outcome for v in trace.verdicts] == ["replied", "replied"]
    assert any(
        "the firewall rules of ftfw-h changed while the probes were out" in n for n in trace.notes
    ), trace.notes
    quiet = api.trace("netns:ftfw-c1", OUT, count=1, timeout=0.5, record=False)
    assert not any("changed while" in n for n in quiet.notes)


def test_a_missing_nft_or_iptables_is_one_line_not_a_traceback(
    docker29: replica.Replica, tmp_path: Path
) -> None:
    only_nft = tmp_path / "only-nft"
    only_nft.mkdir()
    (only_nft / "nft").symlink_to("/usr/sbin/nft")
    env = {**os.environ, "PATH": str(only_nft)}
    shown = run_cli("rules", "netns:ftfw-c1", OUT, env=env)
    assert "Traceback" not in shown.stderr
    assert "iptables-save is not installed: iptables rules are not read" in shown.stdout
    # iptables-nft's tables are read from nft then, their iptables matches only as maybes:
    # nothing is stated as certain
    assert "as far as flowtrace could read (ftfw-c1's iptables" in shown.stdout
    assert "if the request went as shown, which is not certain" in shown.stdout
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    empty = run_cli("rules", "netns:ftfw-c1", OUT, env={**os.environ, "PATH": str(nothing)})
    assert empty.returncode == 8 and empty.stdout == ""
    assert empty.stderr == (
        "flowtrace: neither iptables-save nor nft is installed: flowtrace cannot read the "
        "firewall (Debian: apt-get install iptables nftables)\n"
    )
