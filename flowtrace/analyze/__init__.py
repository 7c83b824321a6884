"""Correlate a recorded set offline: flows, packets hop by hop, NAT events, hop latency.

Reads flowtrace's own sets and sets it did not write (a multi-interface pcapng such
as tcpdump captures merged with mergecap; several classic pcaps, one point each).
The pass is a stream (analyze.passes): frames are decoded and correlated as they are
read, packets are handed to a callback and dropped, and only per-flow and per-hop
summaries (analyze.summaries) are kept, so memory does not grow with the set's length.
What the set's manifest adds is read back by analyze.manifest.
"""

from flowtrace.analyze.manifest import parse_point_names
from flowtrace.analyze.passes import analyze
from flowtrace.analyze.summaries import Analysis, FlowSummary, summary_dict

__all__ = ["Analysis", "FlowSummary", "analyze", "parse_point_names", "summary_dict"]
