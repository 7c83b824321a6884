"""Which address a trace sends to when the destination has both families: RFC 6724's
precedence (as getaddrinfo orders a name's addresses for ping and curl), -4/-6, and the
words that say so.  The routes come from a recorded answer per address."""

from __future__ import annotations

import pytest

from flowtrace.errors import ExitStatus, FlowtraceError, NoPathError
from flowtrace.model import Endpoint, Namespace
from flowtrace.topology.kernel import RTN_UNREACHABLE, Route
from flowtrace.topology.route import choose_destination, precedence, probe_kind_of

SRC = Namespace("/proc/1/ns/net", "v6a", 1, "v6a")
ON_LINK = Route(1, 7, None, None)
VIA_GATEWAY = Route(1, 7, "fd6c:6162:3600::1", None)
NO_ROUTE = Route(RTN_UNREACHABLE, None, None, None)


class Routes:
    """The routing answers of the source namespace, by destination."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes

    def route(self, ns: Namespace, dst: str) -> Route:
        return self.routes.get(dst, NO_ROUTE)


def endpoint(*addresses: str, spec: str = "v6b") -> Endpoint:
    v4 = next((a for a in addresses if ":" not in a and not a.startswith("127.")), None)
    return Endpoint(spec, Namespace("/proc/2/ns/net", spec, 2, spec), addresses, v4)


@pytest.mark.parametrize(
    ("address", "value"),
    [
        ("172.18.0.3", 35),
        ("2001:db8:f6::2", 40),  # documentation, but global as far as the table goes
        ("fd6c:6162:3600::3", 3),  # unique local
        ("::1", 50),
        ("2002:c000:204::1", 30),  # 6to4
        ("2001:0:4136:e378::1", 5),  # Teredo
    ],
)
def test_precedence_is_rfc_6724s_default_table(address: str, value: int) -> None:
    assert precedence(address) == value


def test_ipv4_ranks_before_a_unique_local_ipv6_address_and_the_header_says_why() -> None:
    dst = endpoint("127.0.0.1", "172.18.0.3", "::1", "fd6c:6162:3600::3", "fe80::42:acff:fe12:3")
    view = Routes({"172.18.0.3": ON_LINK, "fd6c:6162:3600::3": ON_LINK})
    chosen = choose_destination(view, SRC, dst)  # type: ignore[arg-type]
    assert chosen.ip == "172.18.0.3"
    assert chosen.reason is not None
    assert chosen.reason.startswith("IPv4: v6b has 172.18.0.3 and fd6c:6162:3600::3")
    assert "RFC 6724" in chosen.reason and chosen.reason.endswith("-6 for IPv6")


def test_a_global_ipv6_address_ranks_before_ipv4() -> None:
    dst = endpoint("198.51.100.9", "2001:db8:f6::9")
    view = Routes({"198.51.100.9": VIA_GATEWAY, "2001:db8:f6::9": VIA_GATEWAY})
    chosen = choose_destination(view, SRC, dst)  # type: ignore[arg-type]
    assert chosen.ip == "2001:db8:f6::9"
    assert chosen.reason is not None and chosen.reason.endswith("-4 for IPv4")


def test_a_family_the_source_cannot_route_is_passed_over_without_a_choice_to_explain() -> None:
    dst = endpoint("172.18.0.3", "2001:db8:f6::9")
    view = Routes({"172.18.0.3": ON_LINK})  # no IPv6 route from the source
    chosen = choose_destination(view, SRC, dst)  # type: ignore[arg-type]
    assert (chosen.ip, chosen.reason) == ("172.18.0.3", None)


def test_minus_6_and_minus_4_choose_the_family() -> None:
    dst = endpoint("172.18.0.3", "fd6c:6162:3600::3")
    view = Routes({"172.18.0.3": ON_LINK, "fd6c:6162:3600::3": ON_LINK})
    six = choose_destination(view, SRC, dst, 6)  # type: ignore[arg-type]
    assert (six.ip, six.reason) == ("fd6c:6162:3600::3", "IPv6 (-6)")
    four = choose_destination(view, SRC, dst, 4)  # type: ignore[arg-type]
    assert (four.ip, four.reason) == ("172.18.0.3", "IPv4 (-4)")


def test_on_link_first_within_a_family() -> None:
    dst = endpoint("10.9.0.3", "172.18.0.3")
    view = Routes({"10.9.0.3": VIA_GATEWAY, "172.18.0.3": ON_LINK})
    assert choose_destination(view, SRC, dst).ip == "172.18.0.3"  # type: ignore[arg-type]


def test_a_family_the_destination_lacks_is_no_path() -> None:
    dst = endpoint("172.17.0.3", spec="c2")
    with pytest.raises(NoPathError, match=r"c2 has no IPv6 address \(only 172.17.0.3\)"):
        choose_destination(Routes({}), SRC, dst, 6)  # type: ignore[arg-type]


def test_an_address_typed_by_hand_is_kept_and_must_fit_the_flag() -> None:
    typed = Endpoint("fd6c:6162:3600::3", SRC, ("fd6c:6162:3600::3",), "fd6c:6162:3600::3")
    assert choose_destination(Routes({}), SRC, typed).ip == "fd6c:6162:3600::3"  # type: ignore[arg-type]
    with pytest.raises(FlowtraceError, match="is an IPv6 address, but -4 asks for IPv4") as caught:
        choose_destination(Routes({}), SRC, typed, 4)  # type: ignore[arg-type]
    assert caught.value.status == ExitStatus.USAGE


@pytest.mark.parametrize(
    ("dst", "kind"),
    [
        ("c2", "icmp"),
        ("c2:80", "tcp"),
        ("fd6c:6162:3600::3", "icmp"),
        ("[fd6c:6162:3600::3]:80", "tcp"),
        ("netns:ft6-outside", "icmp"),
    ],
)
def test_path_follows_a_destination_with_a_port_as_tcp(dst: str, kind: str) -> None:
    assert probe_kind_of(dst) == kind
