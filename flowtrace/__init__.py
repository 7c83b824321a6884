"""flowtrace: trace a packet through container networking, hop by hop, through NAT.

The library face is small and imports lazily (scapy, docker and matplotlib are slow
to import): ``flowtrace.trace(...)``, ``flowtrace.capture(...)``, ``flowtrace.load(...)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowtrace._version import __version__

__all__ = ["__version__", "capture", "load", "trace"]

if TYPE_CHECKING:
    from flowtrace.api import capture, load, trace


def __getattr__(name: str) -> Any:
    if name in ("trace", "capture", "load"):
        from flowtrace import api

        return getattr(api, name)
    raise AttributeError(name)
