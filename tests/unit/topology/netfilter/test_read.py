"""Reading a namespace's rules: what the user sees when iptables-save is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowtrace.errors import MissingToolError
from flowtrace.topology.netfilter.read import read_firewall


def test_no_reader_at_all_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without iptables-save and nft
    with pytest.raises(MissingToolError, match="neither iptables-save nor nft is installed"):
        read_firewall("/proc/self/ns/net")
