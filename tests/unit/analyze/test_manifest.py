"""analyze.manifest: what a set's manifest adds to its pcapng, read back."""

from __future__ import annotations

from flowtrace.analyze.manifest import PacketIds, probe_numbers_for, verdicts_from
from flowtrace.correlate.probes import ProbeNumbers


def test_packet_ids_keep_recorded_ones_and_never_repeat() -> None:
    ids = PacketIds()
    assert [ids.assign({1}), ids.assign({2}), ids.assign({5})] == [1, 2, 5]
    assert ids.assign({None}) == 6  # not recorded: the next free id
    assert ids.assign({7, 8}) == 7  # sightings disagree: a fresh one
    assert ids.assign({7}) == 8  # taken already: a fresh one rather than a repeat
    assert ids.assign({20}) == 20


def test_sets_that_a_trace_did_not_write_get_no_probe_numbers() -> None:
    assert probe_numbers_for(None) is None
    assert probe_numbers_for({"kind": "capture", "points": []}) is None
    numbers = probe_numbers_for({"kind": "icmp", "count": 3, "points": [{"id": "c1/eth0"}]})
    assert numbers is not None and numbers.source == "c1/eth0"


def test_verdicts_come_back_from_records_and_from_schema_1_texts() -> None:
    numbers = ProbeNumbers("icmp", 2, "c1/eth0")
    numbers.sent_ns[1], numbers.answered_ns[1] = 100, 350
    manifest = {
        "verdicts": [
            {"probe": 0, "outcome": "lost", "last_point": "host/docker0", "detail": "x",
             "rule": "-P FORWARD DROP", "rtt_ns": None, "text": "lost after host/docker0 (x)"},
            "replied (echo reply)",
        ]
    }  # fmt: skip
    lost, replied = verdicts_from(manifest, numbers)
    assert (lost.probe, lost.outcome, lost.rule) == (0, "lost", "-P FORWARD DROP")
    assert (replied.probe, replied.detail, replied.rtt_ns) == (1, "echo reply", 250)
    assert verdicts_from({"verdicts": "no"}, numbers) == ()
