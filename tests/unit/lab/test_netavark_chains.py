"""netavark's leftover chains found and deleted from recorded iptables-save output."""

from __future__ import annotations

from flowtrace.lab.netavark_chains import chains_in, rules_to_delete

# iptables-save -t nat on Debian 12 after the Podman lab's containers were removed
# (netavark 1.4 leaves its base chains), with Docker's own rules next to them.
MASQ_RULE = (
    '-A NETAVARK-HOSTPORT-MASQ -m comment --comment "netavark portfw masq mark" '
    "-m mark --mark 0x2000/0x2000 -j MASQUERADE"
)
NAT_AFTER_PODMAN = f"""\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:NETAVARK-HOSTPORT-DNAT - [0:0]
:NETAVARK-HOSTPORT-MASQ - [0:0]
:NETAVARK-HOSTPORT-SETMARK - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j NETAVARK-HOSTPORT-DNAT
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -m addrtype --dst-type LOCAL -j NETAVARK-HOSTPORT-DNAT
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -j NETAVARK-HOSTPORT-MASQ
{MASQ_RULE}
-A NETAVARK-HOSTPORT-SETMARK -j MARK --set-xmark 0x2000/0x2000
COMMIT
""".splitlines()


def test_only_netavarks_chains_are_named() -> None:
    assert chains_in(NAT_AFTER_PODMAN) == [
        "NETAVARK-HOSTPORT-DNAT",
        "NETAVARK-HOSTPORT-MASQ",
        "NETAVARK-HOSTPORT-SETMARK",
    ]


def test_jumps_to_them_and_their_rules_are_deleted_and_dockers_kept() -> None:
    deletions = rules_to_delete(NAT_AFTER_PODMAN)
    assert ["-D", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j",
            "NETAVARK-HOSTPORT-DNAT"] in deletions  # fmt: skip
    assert ["-D", "POSTROUTING", "-j", "NETAVARK-HOSTPORT-MASQ"] in deletions
    # the comment's quotes are undone, as iptables -D wants the words
    assert ["-D", "NETAVARK-HOSTPORT-MASQ", "-m", "comment", "--comment",
            "netavark portfw masq mark", "-m", "mark", "--mark", "0x2000/0x2000", "-j",
            "MASQUERADE"] in deletions  # fmt: skip
    assert all("DOCKER" not in d and "172.17.0.0/16" not in d for d in deletions)
    assert len(deletions) == 5


def test_a_machine_without_netavark_has_nothing_to_delete() -> None:
    docker_only = [line for line in NAT_AFTER_PODMAN if "NETAVARK" not in line]
    assert chains_in(docker_only) == [] and rules_to_delete(docker_only) == []
