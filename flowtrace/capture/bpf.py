"""Kernel packet filters from tcpdump syntax, compiled by libpcap's own compiler.

We only borrow libpcap's *compiler* (pcap_open_dead + pcap_compile) through ctypes;
the program it returns has the layout of the kernel's `struct sock_filter[]`, so the
capture sockets can attach it with SO_ATTACH_FILTER before they are bound and no
frame the user did not ask for is ever copied to user space.
"""

from __future__ import annotations

import ctypes
import functools
import socket
import struct
import threading

from flowtrace.errors import FlowtraceError, MissingToolError

#: libpcap's "netmask unknown": broadcast tests need one, nothing else does.
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
DEFAULT_SNAPLEN = 262144
SO_ATTACH_FILTER = 26
#: One `struct sock_filter` (== libpcap's `struct bpf_insn`): u16 code, u8 jt, u8 jf, u32 k.
INSTRUCTION = struct.Struct("=HBBI")
#: "ret #0": accept nothing.  Swapping it in stops a capture at once, cleanly.
DROP_ALL = INSTRUCTION.pack(0x06, 0, 0, 0)

#: pcap_open_dead takes a DLT_ value; the pcap(ng) LINKTYPE_ value is the same number
#: except for these four (DLT_ numbers as on Linux).
_DLT_OF_LINKTYPE = {100: 11, 101: 12, 102: 15, 103: 16}

_LIBPCAP_NAMES = ("libpcap.so.0.8", "libpcap.so.1", "libpcap.so")


class _BpfInsn(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    )


class _BpfProgram(ctypes.Structure):
    _fields_ = (("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn)))


# Older libpcap compilers kept global parser state: serialise compilations.
_compile_lock = threading.Lock()


@functools.cache
def _libpcap() -> ctypes.CDLL:
    """Load libpcap once and declare the few functions we call."""
    lib = None
    for name in _LIBPCAP_NAMES:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        from ctypes.util import find_library  # slow to import: only as a last resort

        found = find_library("pcap")
        if not found:
            raise MissingToolError("libpcap not found: apt-get install libpcap0.8")
        lib = ctypes.CDLL(found)
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = (ctypes.c_int, ctypes.c_int)
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_compile.argtypes = (
        ctypes.c_void_p,
        ctypes.POINTER(_BpfProgram),
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint32,
    )
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = (ctypes.c_void_p,)
    lib.pcap_freecode.restype = None
    lib.pcap_freecode.argtypes = (ctypes.POINTER(_BpfProgram),)
    lib.pcap_close.restype = None
    lib.pcap_close.argtypes = (ctypes.c_void_p,)
    return lib


@functools.lru_cache(maxsize=64)
def compile_filter(expr: str | None, linktype: int = 1, snaplen: int = DEFAULT_SNAPLEN) -> bytes:
    """Compile a tcpdump expression to a packed `struct sock_filter[]`.

    `linktype` is the pcap LINKTYPE_ of the interface (1: Ethernet, 101: raw IP).

    Returns b"" for an empty or missing expression: no filter, every frame.
    Raises FlowtraceError("bad filter '...': <libpcap's reason>") for a bad one.
    """
    if expr is None or not expr.strip():
        return b""
    lib = _libpcap()
    with _compile_lock:
        handle = lib.pcap_open_dead(_DLT_OF_LINKTYPE.get(linktype, linktype), snaplen)
        if not handle:
            raise FlowtraceError(f"libpcap cannot compile filters for link type {linktype}")
        program = _BpfProgram()
        try:
            rc = lib.pcap_compile(
                handle, ctypes.byref(program), expr.encode(), 1, PCAP_NETMASK_UNKNOWN
            )
            if rc != 0:
                reason = (lib.pcap_geterr(handle) or b"cannot compile").decode(errors="replace")
                reason = " ".join(reason.split())
                raise FlowtraceError(f"bad filter '{expr}': {reason}")
            try:
                size = program.bf_len * INSTRUCTION.size
                return ctypes.string_at(program.bf_insns, size)
            finally:
                lib.pcap_freecode(ctypes.byref(program))
        finally:
            lib.pcap_close(handle)


def instructions(program: bytes) -> list[tuple[int, int, int, int]]:
    """Decode a packed program into (code, jt, jf, k) tuples, for tests and debugging."""
    return [INSTRUCTION.unpack_from(program, i) for i in range(0, len(program), INSTRUCTION.size)]


def attach_filter(sock: socket.socket, program: bytes) -> None:
    """Attach a compiled program to a socket (SO_ATTACH_FILTER); b"" attaches nothing."""
    if not program:
        return
    buffer = ctypes.create_string_buffer(program, len(program))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HP", len(program) // INSTRUCTION.size, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
