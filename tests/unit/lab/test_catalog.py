"""The scenario catalog: names apart from the base lab's, owners before sharers, how to
trace each, the -p syntax, digests, and the macvlan scenario's parts."""

from __future__ import annotations

import pytest

import flowtrace.lab.catalog as catalog
import flowtrace.lab.macvlan as macvlan
from flowtrace.errors import ExitStatus, FlowtraceError
from flowtrace.lab.base import CONTAINER_NAMES, UPLINK_IP, WEB_ROOT


def test_member_names_are_unique_and_not_the_base_labs() -> None:
    names = [m.name for s in catalog.SCENARIOS.values() for m in s.members]
    assert len(names) == len(set(names))
    assert not set(names) & set(CONTAINER_NAMES)


def test_an_owner_is_made_before_the_container_that_shares_its_namespace() -> None:
    for scenario in catalog.SCENARIOS.values():
        made: list[str] = []
        for member in scenario.members:
            assert member.owner is None or member.owner in made, (scenario.name, member.name)
            made.append(member.name)


def test_every_scenario_says_how_to_trace_it() -> None:
    for scenario in catalog.SCENARIOS.values():
        assert scenario.commands and all(
            c.startswith(("flowtrace ", "docker ")) for c in scenario.commands
        )


def test_digest_follows_the_settings() -> None:
    plain = catalog.Member("x")
    assert plain.digest("img:1") == catalog.Member("x").digest("img:1")
    assert plain.digest("img:1") != catalog.Member("x", joins=("ftlab",)).digest("img:1")
    assert plain.digest("img:1") != plain.digest("img:2")


def test_unknown_scenario_is_a_usage_error() -> None:
    with pytest.raises(FlowtraceError, match="choose one of none, host") as caught:
        catalog.get("bogus")
    assert caught.value.status == ExitStatus.USAGE


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("80", (80, None)),
        ("8080:80", (80, 8080)),
        ("127.0.0.1::80", (80, ("127.0.0.1", None))),
        ("203.0.113.1:9999:80", (80, ("203.0.113.1", 9999))),
    ],
)
def test_publish_in_docker_run_syntax(spec: str, expected: tuple[object, object]) -> None:
    assert catalog.parse_publish(spec) == expected


@pytest.mark.parametrize("spec", ["", "x", "0", "70000:80", "1:2:3:4", "127.0.0.1:x:80"])
def test_bad_publish_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="-p"):
        catalog.parse_publish(spec)


def test_port_options_are_the_docker_sdks() -> None:
    member = catalog.Member("m", publish=("80", "127.0.0.1::81", "9999:82"))
    assert member.port_options() == {
        "ports": {"80/tcp": [None], "81/tcp": [("127.0.0.1", None)], "82/tcp": [9999]}
    }
    exposed = catalog.Member("m", expose=(80,), publish_all=True).port_options()
    assert exposed == {"ports": {"80/tcp": []}, "publish_all_ports": True}
    assert catalog.Member("m").port_options() == {}


def test_ports_scenario_has_one_container_per_form() -> None:
    members = {m.name: m for m in catalog.get("ports").members}
    assert members["pub-random"].publish == ("80",)
    assert members["pub-loopback"].publish == ("127.0.0.1::80",)
    assert members["pub-9999"].publish == (f"{UPLINK_IP}:9999:80",)
    assert members["pub-all"].publish_all and members["pub-all"].expose == (80,)
    assert all(m.command[0] == "httpd" and WEB_ROOT in m.command for m in members.values())


def test_older_members_keep_their_digest() -> None:
    """A member that sets no port or command hashes as before these settings existed."""
    import hashlib
    import json

    text = json.dumps(["img:1", "bridge", "bridge", []])
    assert catalog.Member("x").digest("img:1") == hashlib.sha256(text.encode()).hexdigest()[:12]
    assert catalog.Member("x", publish=("80",)).digest("img:1") != catalog.Member("x").digest(
        "img:1"
    )


def test_the_scenario_names_its_parts_and_m1_is_on_their_network() -> None:
    scenario = catalog.get("macvlan")
    assert scenario.parts is macvlan
    assert catalog.get("none").parts is None
    m1, m2 = scenario.members
    assert (m1.name, m1.mode, m1.network) == (macvlan.M1, "bridge", macvlan.NETWORK)
    assert (m2.name, m2.mode) == (macvlan.M2, "none")
