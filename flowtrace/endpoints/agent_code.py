"""The agent's code: flowtrace itself and pyroute2, sent over the helper's attach stream.

The helper's image holds a Python and nothing of flowtrace (endpoints.agent_image), so
the agent always runs the controller's own code: the modules it opens points with are
the very ones a local capture uses (capture.ring, capture.session), and those it reads a
namespace's state, routes, rules and conntrack with are topology's.  The helper starts
`python -c BOOTSTRAP`, which reads one line from stdin (a zip, base64), keeps it in
memory (a memfd, never on the host's disk), puts it on sys.path and serves
(capture.agent.serve).  Each module is in the zip as its source and as bytecode that
needs no source check (PEP 552's unchecked hash), taken from the interpreter's own
cache when current, so a Python of the same version loads it without compiling and
another one compiles the sources.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import zipfile
from functools import cache

#: The packages the agent imports; each is taken whole from where this process loads it.
PACKAGES = ("flowtrace", "pyroute2")
#: Parts of flowtrace an agent never runs (the CLI, the lab, renderers, offline analysis).
SKIPPED = frozenset({"cli", "lab", "output", "analyze", "notebooks"})

#: What the helper runs: read the code, keep it in memory, serve on stdin/stdout.
BOOTSTRAP = """\
import base64, os, sys
code = base64.b64decode(sys.stdin.buffer.readline())
fd = os.memfd_create("flowtrace-agent")
view = memoryview(code)
while view:
    view = view[os.write(fd, view):]
sys.path.insert(0, f"/proc/self/fd/{fd}")
from flowtrace.capture.agent import serve
serve()
"""


def _unchecked_pyc(source: str) -> bytes | None:
    """The interpreter's cached bytecode of `source`, headed as an unchecked-hash pyc;
    None when there is no current one."""
    cached = importlib.util.cache_from_source(source)
    try:
        with open(cached, "rb") as handle:
            data = handle.read()
        mtime = int(os.stat(source).st_mtime) & 0xFFFFFFFF
    except OSError:
        return None
    if data[:4] != importlib.util.MAGIC_NUMBER or data[4:8] != bytes(4):
        return None  # not this Python's, or already hash-based
    if int.from_bytes(data[8:12], "little") != mtime:
        return None  # stale
    flags = (1).to_bytes(4, "little")  # hash-based, check_source off
    return importlib.util.MAGIC_NUMBER + flags + bytes(8) + data[16:]


def _compiled(source: str, text: bytes) -> bytes:
    import marshal

    code = compile(text, source, "exec", dont_inherit=True)
    flags = (1).to_bytes(4, "little")
    return (
        importlib.util.MAGIC_NUMBER + flags + importlib.util.source_hash(text) + marshal.dumps(code)
    )


def _package_files(package: str) -> list[tuple[str, str]]:
    """(file, name in the zip) of every module of an importable package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {package} is not importable here")
    root = next(iter(spec.submodule_search_locations))
    base = os.path.dirname(root)
    found = []
    for folder, dirs, files in os.walk(root):
        relative = os.path.relpath(folder, root)
        top = relative.split(os.sep)[0]
        dirs[:] = sorted(
            d
            for d in dirs
            if d != "__pycache__"
            and not (package == "flowtrace" and relative == "." and d in SKIPPED)
        )
        if package == "flowtrace" and top in SKIPPED:
            continue
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                found.append((path, os.path.relpath(path, base)))
    return found


@cache
def agent_zip() -> bytes:
    """The zip the helper imports the agent from (made once per process)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for package in PACKAGES:
            for path, name in _package_files(package):
                with open(path, "rb") as handle:
                    text = handle.read()
                archive.writestr(name, text)
                archive.writestr(name + "c", _unchecked_pyc(path) or _compiled(path, text))
    return buffer.getvalue()


def code_line() -> bytes:
    """The first line the helper reads: the zip, in base64."""
    return base64.b64encode(agent_zip()) + b"\n"
