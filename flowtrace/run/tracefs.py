"""skb:kfree_skb for a run's duration, from a tracefs instance of flowtrace's own.

An instance (`instances/flowtrace-<pid>`) has its own buffer, clock and enabled events,
so the system's own tracing (the top-level buffer, other instances) is not touched.
tracefs need not be mounted on the host: a small shell "holder" runs in a private mount
namespace (`unshare --mount`), mounts tracefs there, makes the instance, says `ready`,
and waits on its stdin.  When flowtrace writes a line or goes away (the pipe closes,
however flowtrace ended), the holder prints the instance's trace, disables the event,
removes the instance and exits; its mount goes with its namespace.  It also removes the
instances of flowtrace processes that no longer run (a holder killed outright).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time

from flowtrace.topology.kfree import ETH_P_IP, INSTANCE_PREFIX, KfreeEvent, parse_trace

#: How long the holder may take to mount tracefs and make the instance.
START_TIMEOUT_S = 3.0
#: Per-CPU buffer of the instance: ~100 bytes an event, thousands of drops.
BUFFER_KB = 512

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
trap 'echo 0 > "$I/events/skb/kfree_skb/enable" 2>/dev/null; rmdir "$I" 2>/dev/null' EXIT
trap 'exit 1' TERM INT HUP
echo mono > "$I/trace_clock" && echo BUFFER > "$I/buffer_size_kb" &&
    echo 'protocol == PROTOCOL' > "$I/events/skb/kfree_skb/filter" &&
    echo 1 > "$I/events/skb/kfree_skb/enable" || exit 2
echo ready
read -r _
echo 0 > "$I/events/skb/kfree_skb/enable"
cat "$I/trace"
"""


class DropWatch:
    """The kernel's drop reasons while a run is out; `problem` says why there are none."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.name = f"{INSTANCE_PREFIX}{self.pid}"
        self.problem: str | None = None
        self._holder: subprocess.Popen[bytes] | None = None

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
        )
        argv = [unshare, "--mount", "--propagation", "private"]
        argv += [sh, "-c", script, "flowtrace-tracefs", self.name, str(self.pid)]
        self._holder = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        line = self._read_line(START_TIMEOUT_S)
        if line != b"ready\n":
            self.problem = f"tracefs: {self._finish_with_error()}"

    def stop(self) -> list[KfreeEvent] | None:
        """The instance's events (None when it could not be read), the instance removed."""
        holder, self._holder = self._holder, None
        if holder is None or self.problem is not None:
            return None
        try:
            out, err = holder.communicate(b"\n", timeout=10)
        except subprocess.TimeoutExpired:
            holder.kill()
            out, err = holder.communicate()
        if holder.returncode != 0:
            self.problem = f"tracefs: {_last_line(err) or f'holder exited {holder.returncode}'}"
            return None
        return parse_trace(out.decode(errors="replace"))

    def _read_line(self, timeout: float) -> bytes:
        assert self._holder is not None and self._holder.stdout is not None
        fd = self._holder.stdout.fileno()
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
