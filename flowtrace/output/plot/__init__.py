"""Figures of a trace for notebooks and `flowtrace plot`: the hop timeline and per-hop latency.

common holds what both figures share (the figure, packet selection, kinds, titles),
timeline and latency one figure each, save the writing of image files.  Importing this
package imports matplotlib (not pyplot): callers that only sometimes draw import it
where they draw.
"""

from __future__ import annotations

from flowtrace.output.plot.common import NOTHING_TO_PLOT, TraceFigure, packet_kind, path_order
from flowtrace.output.plot.latency import SLOW_FACTOR, SLOW_MARGIN_US, hop_latency
from flowtrace.output.plot.save import PlotKind, image_format, render
from flowtrace.output.plot.timeline import hop_timeline

__all__ = [
    "NOTHING_TO_PLOT",
    "SLOW_FACTOR",
    "SLOW_MARGIN_US",
    "PlotKind",
    "TraceFigure",
    "hop_latency",
    "hop_timeline",
    "image_format",
    "packet_kind",
    "path_order",
    "render",
]
