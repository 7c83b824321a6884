"""How a capture session sizes its rings: chosen by purpose (RingProfile), no sockets opened."""

from __future__ import annotations

from flowtrace.capture.ring import (
    CAPTURE_RETIRE_MS,
    CAPTURE_RING_MB,
    TRACE_BLOCK_SIZE,
    TRACE_RETIRE_MS,
    TRACE_RING_MB,
    RingGeometry,
    RingProfile,
)
from flowtrace.capture.session import CaptureSession
from flowtrace.model import Namespace, Point

HOST = Namespace("/proc/self/ns/net", "host", 1)
POINTS = [
    Point("host/docker0", HOST, "docker0", 3, "bridge", promisc=True),
    Point("host/eth0", HOST, "eth0", 2, "uplink"),
]


def test_a_trace_session_gets_the_trace_profile() -> None:
    session = CaptureSession(POINTS, "icmp", None, keep_frames=True)
    assert session.profile is RingProfile.TRACE
    assert session.workers == 0
    assert session.geometry == RingGeometry(TRACE_BLOCK_SIZE, 128, 4)
    assert TRACE_RETIRE_MS == 4 and TRACE_RING_MB == 2


def test_what_tracer_and_dns_pass_today_is_the_trace_profile() -> None:
    # tracer.py and dns.py pass ring_mb=2, retire_ms=4: the profile alone gives the same rings.
    explicit = CaptureSession(POINTS, None, None, keep_frames=True, ring_mb=2, retire_ms=4)
    assert explicit.geometry == CaptureSession(POINTS, None, None, keep_frames=True).geometry


def test_a_bulk_session_gets_big_blocks_that_retire_slowly() -> None:
    session = CaptureSession(POINTS, None, None, workers=0)
    assert session.profile is RingProfile.BULK
    assert session.geometry == RingGeometry.for_size(CAPTURE_RING_MB, CAPTURE_RETIRE_MS)
    assert session.geometry.block_size == 256 * 1024
    assert session.geometry.retire_ms == 60


def test_a_named_profile_wins_over_the_mode() -> None:
    session = CaptureSession(POINTS, None, None, keep_frames=True, profile=RingProfile.BULK)
    assert session.geometry == RingProfile.BULK.geometry()
    assert session.keep_frames and session.workers == 0


def test_ring_mb_and_retire_ms_override_one_value_and_keep_the_profile_blocks() -> None:
    session = CaptureSession(POINTS, None, None, keep_frames=True, ring_mb=4, retire_ms=10)
    assert session.geometry == RingGeometry(TRACE_BLOCK_SIZE, 256, 10)
    bulk = CaptureSession(POINTS, None, None, workers=0, retire_ms=20)
    assert bulk.geometry == RingGeometry.for_size(CAPTURE_RING_MB, 20)
