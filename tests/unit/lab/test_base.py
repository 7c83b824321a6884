"""The lab's ground floor: a container's settings digest and the base containers' order."""

from __future__ import annotations

from flowtrace.lab.base import CONTAINERS, ContainerSpec


def test_spec_digest_follows_the_settings() -> None:
    base = ContainerSpec("x", "bridge")
    assert base.digest() == ContainerSpec("y", "bridge").digest()  # the name is not a setting
    assert base.digest() != ContainerSpec("x", "ftlab").digest()
    assert base.digest() != ContainerSpec("x", "bridge", ("sleep", "1")).digest()
    assert base.digest() != ContainerSpec("x", "bridge", ports=((80, 8080),)).digest()
    assert [spec.name for spec in CONTAINERS] == ["c1", "c2", "c3", "c4", "web"]
