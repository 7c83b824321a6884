"""kernel.py's readers where the kernel's state moves under them."""

from __future__ import annotations

from flowtrace.topology.kernel import _nsid_of


def test_a_namespace_whose_process_exited_has_no_id() -> None:
    # a container that stops while its peer is looked for: its /proc entry is gone
    assert _nsid_of("/proc/999999999/ns/net") is None
