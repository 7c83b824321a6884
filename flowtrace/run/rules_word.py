"""What `--rules` asks of the kernel for one run: nothing (`model`), or its own trace.

`--rules kernel` (run.kernel_word.KernelWord) needs nft, tracefs and their parsers; the
default needs none of it, so this is all a run imports until it is asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from flowtrace.model import Namespace, Packet, Point, Verdict
from flowtrace.run.loop import Step

if TYPE_CHECKING:
    from flowtrace.run.kernel_word import KernelWord
    from flowtrace.topology.nftrace import TraceMatch


class NoKernelWord:
    """`--rules model` (the default): nothing is added to the system, nothing reported."""

    def __enter__(self) -> NoKernelWord:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def watch(self, step: Step) -> Step:
        return step

    def report(
        self,
        verdicts: Sequence[Verdict],
        packets: Sequence[Packet],
        points: Sequence[Point],
        ip_ids: Mapping[int, int],
    ) -> None:
        return None


def kernel_word(
    rules: str,
    namespaces: Sequence[Namespace],
    match: Callable[[], TraceMatch],
    path_netns: Sequence[str],
) -> KernelWord | NoKernelWord:
    """What `--rules` asks for: the kernel's trace (`match` says of which packets), or nothing."""
    if rules != "kernel":
        return NoKernelWord()
    from flowtrace.run.kernel_word import KernelWord

    return KernelWord(namespaces, match(), path_netns)
