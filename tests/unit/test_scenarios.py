"""The scenario table: consistent with the base lab, and every scenario buildable."""

from __future__ import annotations

import pytest

from flowtrace import lab, scenarios
from flowtrace.errors import ExitStatus, FlowtraceError


def test_network_names_are_the_labs() -> None:
    assert scenarios.DEFAULT_NETWORK == lab.DEFAULT_NETWORK
    assert scenarios.LAB_NETWORK == lab.LAB_NETWORK


def test_member_names_are_unique_and_not_the_base_labs() -> None:
    names = [m.name for s in scenarios.SCENARIOS.values() for m in s.members]
    assert len(names) == len(set(names))
    assert not set(names) & set(lab.CONTAINER_NAMES)


def test_an_owner_is_made_before_the_container_that_shares_its_namespace() -> None:
    for scenario in scenarios.SCENARIOS.values():
        made: list[str] = []
        for member in scenario.members:
            assert member.owner is None or member.owner in made, (scenario.name, member.name)
            made.append(member.name)


def test_every_scenario_says_how_to_trace_it() -> None:
    for scenario in scenarios.SCENARIOS.values():
        assert scenario.commands and all(
            c.startswith(("flowtrace ", "docker ")) for c in scenario.commands
        )


def test_digest_follows_the_settings() -> None:
    plain = scenarios.Member("x")
    assert plain.digest("img:1") == scenarios.Member("x").digest("img:1")
    assert plain.digest("img:1") != scenarios.Member("x", joins=("ftlab",)).digest("img:1")
    assert plain.digest("img:1") != plain.digest("img:2")


def test_unknown_scenario_is_a_usage_error() -> None:
    with pytest.raises(FlowtraceError, match="choose one of none, host") as caught:
        scenarios.get("bogus")
    assert caught.value.status == ExitStatus.USAGE
