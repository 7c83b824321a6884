"""Compiling tcpdump expressions with libpcap's compiler (no sockets, no root)."""

from __future__ import annotations

import pytest

from flowtrace.capture.bpf import DROP_ALL, compile_filter, instructions
from flowtrace.errors import FlowtraceError

# BPF opcodes as libpcap emits them.
LDH_ABS = 0x28  # ldh [k]
LDB_ABS = 0x30  # ldb [k]
JEQ_K = 0x15  # jeq #k, jt, jf
RET_K = 0x06  # ret #k


def test_ip_compiles_to_the_four_instructions_tcpdump_prints() -> None:
    # tcpdump -d ip:  ldh [12]; jeq #0x800 jt 2 jf 3; ret #262144; ret #0
    assert instructions(compile_filter("ip")) == [
        (LDH_ABS, 0, 0, 12),
        (JEQ_K, 0, 1, 0x0800),
        (RET_K, 0, 0, 262144),
        (RET_K, 0, 0, 0),
    ]


def test_udp_port_filter_checks_ethertype_protocol_and_port() -> None:
    program = instructions(compile_filter("udp and dst port 9000"))
    assert len(program) == 16
    assert program[0] == (LDH_ABS, 0, 0, 12)
    assert (LDB_ABS, 0, 0, 23) in program  # IPv4 protocol byte
    assert any(code == JEQ_K and k == 9000 for code, _, _, k in program)
    assert program[-2:] == [(RET_K, 0, 0, 262144), (RET_K, 0, 0, 0)]


def test_snaplen_is_what_an_accepting_program_returns() -> None:
    assert (RET_K, 0, 0, 128) in instructions(compile_filter("ip", snaplen=128))


def test_linktype_changes_the_program() -> None:
    # LINKTYPE_RAW (101): no Ethernet header, the IP version nibble is tested instead.
    raw = instructions(compile_filter("ip", linktype=101))
    assert raw != instructions(compile_filter("ip"))
    assert raw[0] == (LDB_ABS, 0, 0, 0)


@pytest.mark.parametrize("expr", ["", "   ", None])
def test_no_expression_means_no_filter(expr: str | None) -> None:
    assert compile_filter(expr) == b""


def test_bad_expression_is_one_line_with_libpcaps_reason() -> None:
    with pytest.raises(FlowtraceError) as caught:
        compile_filter("tcp prot 80")
    assert caught.value.message == (
        "bad filter 'tcp prot 80': can't parse filter expression: syntax error"
    )
    assert "\n" not in caught.value.message


def test_unknown_protocol_name_is_reported() -> None:
    with pytest.raises(FlowtraceError, match=r"^bad filter 'proto nosuchproto': .*nosuchproto"):
        compile_filter("proto nosuchproto")


def test_drop_all_returns_zero() -> None:
    assert instructions(DROP_ALL) == [(RET_K, 0, 0, 0)]
