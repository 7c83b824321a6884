"""Reading a namespace's rules: what the user sees when iptables-save is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowtrace.errors import MissingToolError
from flowtrace.topology.netfilter.read import read_ruleset


def test_missing_iptables_save_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without iptables-save
    with pytest.raises(MissingToolError, match="iptables-save is not installed"):
        read_ruleset("/proc/self/ns/net")
