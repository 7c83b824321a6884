"""How dockerd's own namespaces are called: an overlay's sandbox by its network's name."""

from __future__ import annotations

from flowtrace.endpoints.remote import HostNetwork, sandbox_label

NETWORKS = [
    HostNetwork("6lwq16gih4ov03l33p7cqep39", "ftover", "overlay", (4097,), False, True),
    HostNetwork("itusst7nymyu2kx", "ingress", "overlay", (4096,)),
]


def test_sandboxes_are_named_after_their_networks() -> None:
    assert sandbox_label("1-6lwq16gih4", NETWORKS) == "overlay:ftover"
    assert sandbox_label("1-itusst7nym", NETWORKS) == "overlay:ingress"
    assert sandbox_label("1-0000000000", NETWORKS) == "sandbox:1-0000000000"
    assert sandbox_label("lb_6lwq16gih", NETWORKS) == "lb:ftover"
    assert sandbox_label("ingress_sbox", NETWORKS) == "ingress-sbox"
    assert sandbox_label("3dcf63a28371", NETWORKS) is None  # a container's: named as the container
    assert sandbox_label("default", NETWORKS) is None
