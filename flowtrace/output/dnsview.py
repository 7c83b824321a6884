"""`flowtrace dns` in the terminal: resolver, path, rewrites, server, answer."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from flowtrace.model import Address
from flowtrace.model.dns import DNS_PORT, DnsLookup
from flowtrace.output.kernelview import kernel_lines
from flowtrace.output.terminal import engine_line, nat_details, packet_table


def render(result: DnsLookup, console: Any) -> None:
    """The lookup for a terminal: resolver, path, rewrites, server, answer."""
    out = console.print
    out(Text(f"flowtrace dns {result.src.spec} {result.name} ({result.qtype})", style="bold"))
    line = engine_line(result.meta)
    if line:
        out(line)
    if result.hosts_answer is not None:
        out(f"answer from {result.src.spec}'s /etc/hosts: {result.name} -> {result.hosts_answer}")
        for note in result.notes:
            out(f"note: {note}")
        return
    servers = ", ".join(result.config.nameservers) or "no nameserver"
    server = Address(result.server, DNS_PORT)
    if result.server in result.config.nameservers[:1]:
        out(f"resolver: {server} ({result.config.described_as}: {servers})")
    else:
        out(f"resolver: {server} (--server; {result.config.described_as} names {servers})")
    out("path: " + " -> ".join(p.id for p in result.points))
    by_id = {p.id: p for p in result.points}
    if result.sent_from is not None:
        out(f"query sent from {result.sent_from} to {server}")
    for ev in result.nat:
        where = f"in {result.src.netns.label} before {ev.between[1]}"
        if ev.reverse_of:
            out(
                f"answer: source {ev.before} -> {ev.after} {where}: conntrack undoes "
                "the query's DNAT"
            )
        else:
            out(f"query: {ev.label} {where}")
            if ev.rule:
                out(f"  rule: {ev.rule}")
            if ev.conntrack:
                out(f"  conntrack: {ev.conntrack}")
    if result.server_process is not None:
        out(f"delivered to {result.server_socket}, a socket of {result.server_process}")
    elif result.server_socket is not None:
        out(f"no process has a socket bound to {result.server_socket}/udp there")
    for pkt in (result.query, result.answer):
        if pkt is not None:
            out("")
            out(packet_table(pkt, by_id))
            for line in nat_details(pkt.nat):
                out(line, style="yellow")
    out("")
    if result.meta.get("interrupted"):
        out(Text("interrupted before the answer came", style="red"))
    elif result.error is not None:
        out(Text(f"no answer: {result.error}", style="red"))
    elif result.rcode is None:
        out(Text(f"no answer within the timeout from {result.server}", style="red"))
    else:
        rtt = f" in {result.rtt_ns / 1000:.1f} µs" if result.rtt_ns is not None else ""
        count = len(result.records)
        out(f"answer: {result.rcode}, {count} record{'s' if count != 1 else ''}{rtt}")
        for record in result.records:
            for line in record.splitlines():
                out(f"  {line}")
    for note in result.notes:
        out(f"note: {note}")
    kernel = result.meta.get("kernel")
    if isinstance(kernel, dict):  # --rules kernel
        out("")
        for text, style in kernel_lines(kernel):
            out(text, style=style or None)
    if result.meta.get("pcap"):
        out(f"pcap set: {result.meta['pcap']}")
