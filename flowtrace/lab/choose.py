"""Which engine's lab a lab command means: `--engine`, else the engine flowtrace would
ask (Docker as the docker CLI finds it, else Podman)."""

from __future__ import annotations

from flowtrace.endpoints import engines
from flowtrace.endpoints.engines import EngineChoice
from flowtrace.errors import ExitStatus, FlowtraceError


def lab_engine(engine: str | None, context: str | None = None) -> str:
    """ "docker" or "podman"; the lab is built on this machine, so a remote engine (a
    context or DOCKER_HOST reaching another host) is refused."""
    choice = EngineChoice(engine, context)
    choice.check()
    if engine == "podman" and context is None:
        return "podman"  # the Podman lab is built with the local podman CLI
    with engines.using(choice):
        info = engines.connect().info
    if not info.host.startswith("unix://"):
        raise FlowtraceError(
            f"the lab is built on this machine, and {info.selected_by} reaches {info.host}: "
            "choose a local engine",
            ExitStatus.USAGE,
        )
    return info.name
