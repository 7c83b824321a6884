"""skb:kfree_skb for a run's duration, from a tracefs instance of flowtrace's own.

An instance (`instances/flowtrace-<pid>`) has its own buffer, clock and enabled events,
so the system's own tracing (the top-level buffer, other instances) is not touched.
tracefs need not be mounted on the host: a small shell "holder" runs in a private mount
namespace (`unshare --mount`), mounts tracefs there, makes the instance, says `ready`,
then streams the instance's `trace_pipe` to flowtrace while it waits on its stdin.
When flowtrace writes a line or goes away (the pipe closes, however flowtrace ended),
the holder disables the event, removes the instance and exits; its mount goes with its
namespace.  It also removes the instances of flowtrace processes that no longer run.

The events are read as they come (a buffer read at the end would have lost a probe's
drop under a busy host's others), and of each probe's flight only the first
KEEP_PER_PROBE are kept: a probe's own drop comes within microseconds of its sending.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence

from flowtrace.topology.kfree import ETH_P_IP, INSTANCE_PREFIX, KfreeEvent, parse_kfree

#: How long the holder may take to mount tracefs and make the instance.
START_TIMEOUT_S = 3.0
#: Per-CPU buffer of the instance: ~100 bytes an event.
BUFFER_KB = 2048
#: Drops kept per probe, the earliest after its sending.
KEEP_PER_PROBE = 2000
#: Reasons left out in the kernel's own filter: drops at a socket of data already
#: delivered (a full receive buffer, a closing socket, TCP's handling of a connection's
#: data), never the fate of a probe on its way, and the bulk of a busy host's drops.
LEFT_OUT = (
    "SOCKET_RCVBUFF",
    "SOCKET_CLOSE",
    "SOCKET_BACKLOG",
    "QUEUE_PURGE",
    "PROTO_MEM",
    "TCP_OLD_DATA",
    "TCP_OVERWINDOW",
    "TCP_OFOMERGE",
    "TCP_OFO_QUEUE_PRUNE",
    "TCP_OFO_DROP",
    "TCP_ZEROWINDOW",
)

_HOLDER = r"""
T=/sys/kernel/tracing
mount -t tracefs nodev "$T" 2>/dev/null
if [ ! -d "$T/instances" ]; then echo "tracefs is not available" >&2; exit 2; fi
if [ ! -d "$T/events/skb/kfree_skb" ]; then
    echo "this kernel has no skb:kfree_skb tracepoint" >&2; exit 2
fi
for old in "$T"/instances/PREFIX*; do
    [ -d "$old" ] || continue
    pid=${old##*/PREFIX}
    case $pid in *[!0-9]*|'') continue ;; esac
    [ "$pid" != "$2" ] && kill -0 "$pid" 2>/dev/null && continue
    echo 0 > "$old/events/skb/kfree_skb/enable" 2>/dev/null
    rmdir "$old" 2>/dev/null
done
I="$T/instances/$1"
mkdir "$I" || exit 2
reader=
trap '[ -n "$reader" ] && { kill "$reader" 2>/dev/null; wait "$reader" 2>/dev/null; }
      echo 0 > "$I/events/skb/kfree_skb/enable" 2>/dev/null; rmdir "$I" 2>/dev/null' EXIT
trap 'exit 1' TERM INT HUP
F="$T/events/skb/kfree_skb/format" filter='protocol == PROTOCOL'
for reason in LEFT_OUT; do
    n=$(sed -n "s/.*{ \([0-9]*\), \"$reason\" }.*/\1/p" "$F")
    [ -n "$n" ] && filter="$filter && reason != $n"
done
echo mono > "$I/trace_clock" && echo BUFFER > "$I/buffer_size_kb" &&
    echo "$filter" > "$I/events/skb/kfree_skb/filter" &&
    echo 1 > "$I/events/skb/kfree_skb/enable" || exit 2
echo ready
cat "$I/trace_pipe" &
reader=$!
read -r _
echo 0 > "$I/events/skb/kfree_skb/enable"
sleep 0.05
"""


def read_line_within(fd: int, timeout: float) -> bytes:
    """One line from a holder process's pipe, byte by byte (the rest stays for its reader),
    or what came before the timeout or the pipe's end."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data


class DropWatch:
    """The kernel's drop reasons while a run is out; `problem` says why there are none.

    `sent_ns`: the probes' sending times (CLOCK_MONOTONIC), appended to as they go out.
    """

    def __init__(self, sent_ns: Sequence[int], pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.name = f"{INSTANCE_PREFIX}{self.pid}"
        self.sent_ns = sent_ns
        self.problem: str | None = None
        self.events: list[KfreeEvent] = []
        #: Per probe, the drops seen beyond KEEP_PER_PROBE.
        self.not_kept: dict[int, int] = {}
        self._kept: dict[int, int] = {}
        self._holder: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        """Make the instance and enable the event; on failure set `problem`, raise nothing."""
        unshare, sh = shutil.which("unshare"), shutil.which("sh")
        if unshare is None or sh is None:
            self.problem = "unshare (util-linux) is not installed: tracefs was not read"
            return
        script = (
            _HOLDER.replace("PREFIX", INSTANCE_PREFIX)
            .replace("BUFFER", str(BUFFER_KB))
            .replace("PROTOCOL", str(ETH_P_IP))
            .replace("LEFT_OUT", " ".join(LEFT_OUT))
        )
        argv = [unshare, "--mount", "--propagation", "private"]
        argv += [sh, "-c", script, "flowtrace-tracefs", self.name, str(self.pid)]
        self._holder = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C is flowtrace's to handle
        )
        if self._read_line(START_TIMEOUT_S) != b"ready\n":
            self.problem = f"tracefs: {self._finish_with_error()}"
            return
        self._reader = threading.Thread(target=self._read, name="tracefs", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._holder is not None and self._holder.stdout is not None
        for raw in self._holder.stdout:
            ev = parse_kfree(raw.decode(errors="replace"))
            if ev is not None:
                self._keep(ev)

    def _keep(self, ev: KfreeEvent) -> None:
        """Keep the earliest drops of each probe's flight; before the first, none."""
        probe = next((p for p in range(len(self.sent_ns) - 1, -1, -1)
                      if self.sent_ns[p] <= ev.time_ns), None)  # fmt: skip
        if probe is None:
            return
        if self._kept.get(probe, 0) >= KEEP_PER_PROBE:
            self.not_kept[probe] = self.not_kept.get(probe, 0) + 1
            return
        self._kept[probe] = self._kept.get(probe, 0) + 1
        self.events.append(ev)

    def stop(self) -> list[KfreeEvent] | None:
        """The drops seen (None when they could not be read), the instance removed."""
        holder, self._holder = self._holder, None
        if holder is None or self.problem is not None:
            return None
        assert holder.stdin is not None and holder.stderr is not None
        try:  # the reader thread has the holder's stdout: no communicate() here
            holder.stdin.write(b"\n")
            holder.stdin.close()
        except BrokenPipeError:
            pass
        try:
            holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        err = holder.stderr.read()
        holder.stderr.close()
        if holder.returncode != 0:
            self.problem = f"tracefs: {_last_line(err) or f'holder exited {holder.returncode}'}"
            return None
        return list(self.events)

    def _read_line(self, timeout: float) -> bytes:
        assert self._holder is not None and self._holder.stdout is not None
        return read_line_within(self._holder.stdout.fileno(), timeout)

    def _finish_with_error(self) -> str:
        holder, self._holder = self._holder, None
        assert holder is not None
        if holder.poll() is None:
            holder.terminate()
        try:
            _, err = holder.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            holder.kill()
            _, err = holder.communicate()
        return _last_line(err) or "the instance could not be made"


def _last_line(data: bytes) -> str:
    lines = data.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""
