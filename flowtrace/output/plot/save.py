"""Writing the figures to PNG or SVG files, as `flowtrace plot` does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from matplotlib.figure import Figure

from flowtrace.errors import ExitStatus, FlowtraceError
from flowtrace.model import Trace
from flowtrace.output.plot.latency import hop_latency
from flowtrace.output.plot.timeline import hop_timeline

PlotKind = Literal["timeline", "latency", "both"]

FORMATS = {".png": "png", ".svg": "svg"}
PNG_DPI = 150


def image_format(path: Path | str) -> str:
    """The format render() writes for this file name ("png" or "svg"), or a usage error.

    Callers check the name before loading a set, so a typo fails at once.
    """
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise FlowtraceError(
            f"cannot write {path.name!r}: name a .png or .svg file", ExitStatus.USAGE
        )
    return fmt


def render(trace: Trace, path: Path | str, kind: PlotKind = "both") -> list[Path]:
    """Write the figures as PNG or SVG (by the file's extension); return the paths written.

    "both" writes two files named after `path`: out.png -> out-timeline.png, out-latency.png.
    Both figures are built before anything is written, so an error leaves no half result.
    """
    path = Path(path)
    fmt = image_format(path)
    builders: dict[str, Callable[[Trace], Figure]] = {
        "timeline": hop_timeline,
        "latency": hop_latency,
    }
    if kind == "both":
        targets = [(name, path.with_name(f"{path.stem}-{name}{path.suffix}")) for name in builders]
    elif kind in builders:
        targets = [(kind, path)]
    else:
        raise FlowtraceError(
            f"unknown plot kind {kind!r}: use timeline, latency or both", ExitStatus.USAGE
        )
    figures = [(builders[name](trace), target) for name, target in targets]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for figure, target in figures:
            figure.savefig(target, format=fmt, dpi=PNG_DPI if fmt == "png" else "figure")
    except OSError as exc:
        raise FlowtraceError(
            f"cannot write {exc.filename or path}: {exc.strerror or exc}"
        ) from None
    return [target for _, target in targets]
