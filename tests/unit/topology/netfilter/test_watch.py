"""The rules' fingerprints before and after a trace's probes: each namespace read once
each time, side by side, and a change named."""

from __future__ import annotations

import threading
import time

import pytest

from flowtrace.model import Namespace
from flowtrace.topology.netfilter import watch


def test_each_namespace_is_read_once_side_by_side_and_a_change_is_a_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rules = {"/a": "one", "/b": "two", "/c": None}
    reads: list[str] = []
    running, most = [0], [0]
    lock = threading.Lock()

    def read(ns: Namespace) -> str | None:
        with lock:
            reads.append(ns.path)
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return rules[ns.path]

    monkeypatch.setattr(watch, "_read", read)
    a, b, c = (Namespace(path=p, label=p[1:]) for p in ("/a", "/b", "/c"))
    seen = watch.RulesWatch.start([a, b, a, c])
    assert sorted(reads) == ["/a", "/b", "/c"] and most[0] == 3
    rules["/b"] = "three"
    reads.clear()
    notes = seen.changes()
    assert sorted(reads) == ["/a", "/b"]  # /c could not be read before: not asked again
    assert len(notes) == 1 and notes[0].startswith("the firewall rules of b changed")


def test_a_reader_that_fails_fails_the_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    def read(ns: Namespace) -> str | None:
        if ns.path == "/b":
            raise RuntimeError("boom")
        return "x"

    monkeypatch.setattr(watch, "_read", read)
    with pytest.raises(RuntimeError, match="boom"):
        watch.RulesWatch.start([Namespace(path="/a", label="a"), Namespace(path="/b", label="b")])


def test_begin_reads_in_the_background_until_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()

    def read(ns: Namespace) -> str | None:
        gate.wait(5)
        return "rules"

    monkeypatch.setattr(watch, "_read", read)
    seen = watch.RulesWatch.begin([Namespace(path="/a", label="a")])
    assert seen.before == {}  # still reading: the caller goes on (the capture starts)
    gate.set()
    seen.ready()
    assert seen.before["/a"][1] == "rules"
    assert seen.changes() == []
