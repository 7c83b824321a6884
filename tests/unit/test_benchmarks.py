"""The benchmarks name flowtrace's functions by string: they must still exist.

Nothing is timed here (benchmarks run by hand); this only keeps ping_bench.py's list
of stages in step with the code it wraps, which a rename would otherwise break.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_every_stage_ping_bench_wraps_exists() -> None:
    spec = importlib.util.spec_from_file_location("ping_bench", BENCHMARKS / "ping_bench.py")
    assert spec is not None and spec.loader is not None
    ping_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ping_bench)
    assert len(ping_bench.STAGES) >= 10
    for module_name, attribute, method, _ in ping_bench.STAGES:
        owner = getattr(importlib.import_module(module_name), attribute)
        assert method is None or callable(getattr(owner, method)), (module_name, method)
