"""What the user typed, split into an endpoint and a port: `[ADDR]:PORT` as URLs write it."""

from __future__ import annotations

import pytest

from flowtrace.endpoints.resolve import split_port
from flowtrace.errors import ExitStatus, FlowtraceError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("c2:80", ("c2", 80)),
        ("203.0.113.1:8080", ("203.0.113.1", 8080)),
        ("netns:ft-outside", ("netns:ft-outside", None)),
        ("netns:ft-outside:53", ("netns:ft-outside", 53)),
        ("pid:42", ("pid:42", None)),
        ("[fd6c:6162:3600::3]:80", ("fd6c:6162:3600::3", 80)),
        ("[::1]:8086", ("::1", 8086)),
        ("[2001:db8:f6::1]", ("2001:db8:f6::1", None)),
        ("fd6c:6162:3600::3", ("fd6c:6162:3600::3", None)),  # a bare IPv6 address: no port
        ("fe80::1", ("fe80::1", None)),
    ],
)
def test_split_port(spec: str, expected: tuple[str, int | None]) -> None:
    assert split_port(spec) == expected


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("[fd00::3]:http", "bad port 'http'"),
        ("[fd00::3]:0", "bad port '0'"),
        ("[fd00::3]80", "after [fd00::3] comes :PORT"),
        ("[fd00::3", "brackets hold an IPv6 address"),
        ("[c2]:80", "brackets hold an IPv6 address"),
        ("[203.0.113.1]:80", "brackets hold an IPv6 address"),
        ("c2:65536", "bad port '65536'"),
    ],
)
def test_bad_specs_are_usage_errors(spec: str, words: str) -> None:
    with pytest.raises(FlowtraceError, match=words.replace("[", r"\[")) as caught:
        split_port(spec)
    assert caught.value.status == ExitStatus.USAGE
