"""The kernel's word put together: probes, hook order along the path, and the checks
against flowtrace's own reading of the rules, replayed from real runs."""

from __future__ import annotations

from sample_kernel import replay

from flowtrace.model import Verdict
from flowtrace.topology.kernel_report import KernelPacket, ProbeKeys, drop_check, report
from flowtrace.topology.kfree import MATCHED_BY
from flowtrace.topology.nftrace import ChainPass, HookVisit, RuleMet, TraceMatch


def test_a_cross_bridge_drop_is_found_where_the_model_found_it() -> None:
    r = replay("isolated")
    (packet,) = r.packets
    assert (packet.probe, packet.direction) == (0, "request")
    assert [(v.netns, v.hook) for v in packet.visits] == [
        ("c1", "output"),
        ("c1", "postrouting"),
        ("host", "prerouting"),
        ("host", "forward"),
    ]
    dropped = packet.dropped
    assert dropped is not None and dropped[0].hook == "forward"
    rule = "-A DOCKER-ISOLATION-STAGE-2 -o br-030eed382933 -j DROP"
    assert dropped[1].shown == rule
    (check,) = r.checks()
    assert check["agree"] is True and check["model"] == check["kernel"] == rule
    assert check["text"] == f"the kernel agrees: dropped in host forward by `{rule}`"


def test_a_reply_goes_back_along_the_path_and_a_wrong_rule_is_caught() -> None:
    r = replay("masquerade")
    request, reply = r.packets
    assert next(v.netns for v in request.visits) == "c1"
    assert next(v.netns for v in reply.visits) == "ft-outside"  # reversed
    (check,) = r.checks()
    assert check["about"] == "SNAT" and check["agree"] is False
    assert check["kernel"] == "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
    assert "NETAVARK-HOSTPORT-MASQ" in check["model"]
    assert check["text"].startswith("the model and the kernel disagree on SNAT")


def test_a_published_port_the_syn_its_answer_and_the_sources_rst() -> None:
    r = replay("dnat")
    kinds = [(p.direction, p.what) for p in r.packets]
    assert kinds == [("request", "tcp SYN"), ("request", "tcp RST"), ("reply", "tcp SYN+ACK")]
    checks = r.checks()
    assert len(checks) == 1  # the SYN's and the RST's rewrite are one check
    assert checks[0]["agree"] is True and checks[0]["where"] == "host prerouting"
    syn = r.packets[0]
    pre = next(v for v in syn.visits if (v.netns, v.hook) == ("host", "prerouting"))
    assert pre.chains[0].rules[-1].shown.endswith("-j DNAT --to-destination 172.17.0.4:80")


def test_a_drop_no_rule_made_and_its_reason() -> None:
    r = replay("rpfilter")
    (packet,) = r.packets
    assert packet.dropped is None and packet.visits[-1].hook == "prerouting"
    (check,) = r.checks()
    assert check["where"] == "ftkw-r prerouting" and "no rule or policy" in check["text"]
    (drop,) = r.drops()
    assert drop.event.reason == "IP_RPFILTER" and drop.probe == 0


def test_a_rewrite_no_capture_point_saw() -> None:
    (check,) = replay("udp-dnat").checks()
    assert (check["about"], check["model"], check["agree"]) == ("DNAT", None, False)
    assert "--to-destination 10.251.0.2:5354" in check["kernel"]
    assert check["where"] == "ftk-b prerouting"


def test_a_lookup_through_dockers_embedded_dns() -> None:
    r = replay("dns")
    assert [p.direction for p in r.packets] == ["request", "reply"]
    (check,) = r.checks()
    assert check["agree"] is True and check["where"] == "c3 output"


def test_the_report_is_what_the_run_printed() -> None:
    for name in ("isolated", "masquerade", "dnat", "rpfilter", "udp-dnat", "dns"):
        r = replay(name)
        drops = r.drops()
        recorded = r.record["kernel"]
        made = report(
            recorded["tables"],
            r.packets,
            r.checks(),
            drops,
            recorded["tracefs"],
            recorded["notes"],
            recorded["subject"],
        )
        for section in (made, recorded):  # the words for a reason may improve
            for drop in section["drops"]:
                drop.pop("meaning")
        recorded_drops = recorded.pop("drops")
        made_drops = made.pop("drops")
        assert made == recorded, name
        assert all(d in recorded_drops for d in made_drops), name  # windows only narrowed
        assert made["drops_matched_by"] == MATCHED_BY


def _packet(probe: int, dropped: bool) -> KernelPacket:
    rule = RuleMet("ip", "filter", "FORWARD", None, "policy drop", "drop", "-P FORWARD DROP")
    chains = (ChainPass("ip", "filter", "FORWARD", (rule,)),) if dropped else ()
    return KernelPacket(probe, "request", "icmp", (HookVisit("host", "forward", 0, {}, chains),))


def test_each_way_the_model_and_the_kernel_can_differ() -> None:
    lost = Verdict(0, "lost", "host/docker0", "", None, "-A X -j DROP")
    other = drop_check(lost, [_packet(0, True)])
    assert other is not None and other["agree"] is False and "-P FORWARD DROP" in other["text"]
    none = drop_check(lost, [_packet(0, False)])
    assert none is not None and "no rule or policy dropped" in none["text"]
    unknown = drop_check(Verdict(0, "lost", "x", "", None, None), [_packet(0, True)])
    assert unknown is not None and unknown["text"].startswith("the kernel's trace names what")
    assert drop_check(Verdict(0, "replied"), [_packet(0, False)]) is None
    assert drop_check(lost, [_packet(1, True)]) is None  # the kernel saw nothing of probe 0


def test_which_probe_a_traced_packet_belongs_to() -> None:
    keys = ProbeKeys(TraceMatch.for_probes("icmp", 1), {4242: 1}, [100, 200, 300])

    def probe(fields: dict[str, str], t: int = 0) -> tuple[int | None, str]:
        return keys.probe_and_direction(HookVisit("n", "output", t, fields))

    assert probe({"icmp type": "echo-request", "ip id": "4242"}) == (1, "request")
    assert probe({"icmp type": "echo-reply", "icmp sequence": "2", "ip id": "7"}) == (2, "reply")
    assert probe({"icmp type": "echo-request", "ip id": "1"}, 250) == (1, "request")  # by time
    error = {"icmp type": "destination-unreachable", "@th,64": "450000540000000040010000"}
    assert probe({**error, "ip id": "9"}, 50) == (None, "reply")
    error["@th,64"] = "4500005410920000400100"  # quoting IP ID 0x1092 = 4242
    assert probe(error) == (1, "reply")
    tcp = ProbeKeys(TraceMatch.for_probes("tcp", 0, [10]), {}, [100])
    visit = HookVisit("n", "prerouting", 150, {"tcp flags": "0x12"})
    assert tcp.probe_and_direction(visit) == (0, "reply")
    dns = ProbeKeys(TraceMatch.for_socket(5000), {}, [100])
    answer = HookVisit("n", "input", 150, {"udp sport": "53", "udp dport": "5000"})
    assert dns.probe_and_direction(answer) == (0, "reply")


def test_a_native_nftables_rule_is_the_same_by_table_chain_and_handle() -> None:
    """flowtrace names it `table F T chain C handle N: text` (from `nft -a -s list
    ruleset`); the kernel's trace prints the same rule with `counter packets ...`."""
    from flowtrace.topology.kernel_report import _same_rule
    from flowtrace.topology.nftrace import RuleMet

    text = 'ip daddr 10.247.1.2 iifname != "ftfw-b1" counter drop comment "DROP DIRECT ACCESS"'
    met = RuleMet("ip", "docker-bridges", "raw-PREROUTING", 40, text, "drop")
    model = (
        "table ip docker-bridges chain raw-PREROUTING handle 40: ip daddr 10.247.1.2 iifname "
        '!= "ftfw-b1" counter drop comment "DROP DIRECT ACCESS"'
    )
    assert met.shown == model
    assert _same_rule(model, met)
    assert not _same_rule(model.replace("handle 40", "handle 41"), met)
    policy = RuleMet("inet", "netavark", "FORWARD", None, "policy drop", "drop")
    assert _same_rule("table inet netavark chain FORWARD: policy drop", policy)
    assert not _same_rule("table inet netavark chain FORWARD: policy accept", policy)
