"""The `--rules kernel` section as a person reads it, rendered from recorded runs."""

from __future__ import annotations

import copy

from sample_kernel import record

from flowtrace.output.kernelview import kernel_lines


def _text(kernel: dict) -> list[str]:  # type: ignore[type-arg]
    return [text for text, _ in kernel_lines(kernel)]


def test_a_cross_bridge_drop_reads_hook_by_hook() -> None:
    lines = _text(record("isolated")["kernel"])
    assert lines[0] == "the kernel's word (nftables trace in c1, host, c3; --rules kernel):"
    assert lines[1] == "probe 1, request: icmp echo request seq=0"
    assert "  c1 output (out eth0): no chain of c1's on this hook" in lines
    assert "    ip nat PREROUTING: policy accept" in lines
    forward = lines.index("  host forward (docker0 -> br-030eed382933):")
    assert lines[forward + 1 : forward + 4] == [
        "    ip filter FORWARD:",
        "      -A FORWARD -j DOCKER-USER",
        "      -A DOCKER-USER -j RETURN",
    ]
    drop = "      -A DOCKER-ISOLATION-STAGE-2 -o br-030eed382933 -j DROP   => drop"
    assert drop in lines
    assert any(line.startswith("  the kernel agrees: dropped in host forward") for line in lines)
    assert any("matched by time and protocol only" in line for line in lines)
    assert any(line.strip().startswith("NETFILTER_DROP at nft_do_chain") for line in lines)


def test_nat_chains_conntrack_skips_and_a_lookup() -> None:
    lines = _text(record("masquerade")["kernel"])
    assert any("ip nat PREROUTING: not evaluated (nat chains see" in line for line in lines)
    dns = _text(record("dns")["kernel"])
    assert "the query: udp" in dns and "the answer: udp" in dns


def test_later_probes_like_the_first_are_one_line() -> None:
    kernel = copy.deepcopy(record("isolated")["kernel"])
    first = kernel["packets"][0]
    for probe in range(1, 6):
        pkt = copy.deepcopy(first)
        pkt["probe"] = probe
        pkt["what"] = f"icmp echo request seq={probe}"
        kernel["packets"].append(pkt)
    lines = _text(kernel)
    assert sum(line.startswith("probe ") and ", request:" in line for line in lines) == 3
    assert "probes 4-6: the same hooks and rules as the probes above" in lines


def test_what_could_not_be_traced_is_said() -> None:
    kernel = copy.deepcopy(record("rpfilter")["kernel"])
    kernel["tables"][0]["traced"] = False
    kernel["tables"][0]["problem"] = "nft could not trace in ftkw-s: Error: x"
    kernel["drops"] = None
    kernel["tracefs"] = "tracefs: tracefs is not available"
    lines = _text(kernel)
    assert "note: nft could not trace in ftkw-s: Error: x" in lines
    assert lines[-1] == "drop reasons: not read (tracefs: tracefs is not available)"


def test_a_native_rule_under_its_base_chain_by_handle() -> None:
    from flowtrace.output.kernelview import rule_line

    rule = {"table": "ip docker-bridges", "chain": "nat-prerouting-and-output", "handle": 37,
            "rule": "table ip docker-bridges chain nat-prerouting-and-output handle 37: dnat",
            "nft": 'tcp dport 8080 dnat to 10.247.0.2:80 comment "DNAT"', "iptables": None,
            "verdict": "accept"}  # fmt: skip
    assert rule_line(rule, "nat-PREROUTING")[0] == (
        "      chain nat-prerouting-and-output handle 37: tcp dport 8080 dnat to 10.247.0.2:80 "
        'comment "DNAT"   => accept'
    )
    assert rule_line(rule, "nat-prerouting-and-output")[0].startswith("      handle 37: tcp")
