"""Namespaces on other hosts: named HOST:PATH, labelled NAME@HOST, told apart by (host, inode)."""

from __future__ import annotations

from flowtrace.model import Namespace, Point, split_host


def test_a_path_on_another_host_starts_with_the_host() -> None:
    assert split_host("hostb:/proc/812/ns/net") == ("hostb", "/proc/812/ns/net")
    assert split_host("/proc/812/ns/net") == (None, "/proc/812/ns/net")
    assert split_host("") == (None, "")
    assert split_host("hostb:relative") == (None, "hostb:relative")


def test_a_namespace_knows_its_host_and_identity() -> None:
    here = Namespace("/proc/self/ns/net", "host", 4026531840)
    there = Namespace("hostb:/proc/9/ns/net", "host@hostb", 4026531840)
    assert (here.host, there.host) == (None, "hostb")
    assert here.inode == there.inode and here.key != there.key  # init_net's inode is everywhere
    assert there.base_label == "host" and there.is_host and here.is_host
    recorded = Namespace("", "overlay:ftover@hostb", 0)  # from a manifest: no path
    assert recorded.host == "hostb" and recorded.base_label == "overlay:ftover"


def test_a_point_on_another_host_says_so_in_its_description() -> None:
    ns = Namespace("hostb:/proc/9/ns/net", "c2@hostb", 7, "c2")
    point = Point("c2@hostb/eth0", ns, "eth0", 2, "destination")
    assert point.description == "host=hostb netns=c2@hostb container=c2 role=destination"
