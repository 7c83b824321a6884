"""The helper's image, made from what flowtrace has: this machine's own Python, no registry.

A remote host needs nothing but Docker.  flowtrace runs its capture agent there in a
short-lived helper container whose image is the controller's own interpreter, the
shared libraries it and its extension modules load (as `ldd` names them), its standard
library compiled (no sources), `iptables-save` (nft and legacy) with its extensions and
`nft` (so the agent can read that host's rules), written into a tar in memory and
imported through the engine's API (`docker import`: the same connection as everything
else).  flowtrace's
own code is not in it: it is sent over the helper's attach stream each time
(endpoints.agent_code), so the image changes only with the Python it is made of.  It
is tagged by a digest of its files and labelled, and kept on the host for the next
trace (`docker image rm` takes it away; `lab down` does for the lab's hosts).

The same machine type is required: the image holds x86-64 (or whatever this machine
runs) binaries, and the engine's architecture is checked first.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from flowtrace.errors import FlowtraceError, MissingToolError

AGENT_REPOSITORY = "flowtrace/agent"
#: On the image and on every helper container: what flowtrace made.
AGENT_LABEL = "flowtrace.agent"
#: An engine label (dockerd --label) of the lab's own hosts: the image stays there for the
#: next trace and `lab down` removes it; on any other host a trace removes what it imported.
KEEP_IMAGE_ENGINE_LABEL = "flowtrace.lab.host=1"
#: Raised when what goes into the image changes shape (not its contents).
IMAGE_FORMAT = "1"
#: Standard library folders an agent never imports: tests, GUIs, installers, sources of
#: documentation, the build configuration, and third-party packages.
SKIPPED_STDLIB = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "distutils",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "venv",
        "curses",
        "dbm",
    }
)
#: Extension modules left out: tests, GUIs and terminals, and those that pull libraries
#: the agent never uses (pyroute2 does import asyncio, hence ssl, and sqlite3: they stay).
SKIPPED_EXTENSIONS = (
    "_test",
    "xx",
    "_ctypes_test",
    "_tkinter",
    "_curses",
    "readline",
    "nis",
    "ossaudiodev",
    "_dbm",
    "_gdbm",
    "_crypt",
    "spwd",
)
#: The programs that read a namespace's rules (topology.netfilter.read and .watch run
#: them): iptables-nft and iptables-legacy (each one multi-call binary), and nft.
RULE_PROGRAMS = (
    "iptables-save",
    "ip6tables-save",
    "iptables-nft-save",
    "ip6tables-nft-save",
    "iptables-legacy-save",
    "ip6tables-legacy-save",
    "nft",
)
#: Where iptables finds its match and target extensions (dlopen'd when printing rules).
XTABLES_DIRS = ("/usr/lib/x86_64-linux-gnu/xtables", "/usr/lib/xtables", "/usr/lib64/xtables")
#: The interpreter in the image (a link to wherever it lives on this machine).
AGENT_PYTHON = "/flowtrace/python3"
#: The engine's names for this machine's architecture.
ENGINE_ARCHITECTURES = {"x86_64": ("x86_64", "amd64"), "aarch64": ("aarch64", "arm64")}


@dataclass(frozen=True)
class ImageFile:
    """One entry of the image: where it goes, and where it comes from on this machine."""

    path: str  # absolute, in the image
    source: str | None = None  # a file here; None with `link` or `data`
    link: str | None = None  # a symbolic link's target
    data: bytes | None = None  # contents made here (compiled modules)
    mode: int = 0o644


@dataclass(frozen=True)
class AgentRuntime:
    """What the helper runs: the interpreter's path in the image and the image's files."""

    python: str
    home: str
    files: tuple[ImageFile, ...]
    library_path: tuple[str, ...]


def _sources() -> tuple[str, str, str, list[tuple[str, str]], str | None]:
    """(interpreter, standard library, its extension modules' folder, rule programs as
    (name, file), iptables' extension folder) on this machine."""
    stdlib = sysconfig.get_paths()["stdlib"]
    xtables = next((d for d in XTABLES_DIRS if os.path.isdir(d)), None)
    return (
        os.path.realpath(sys.executable),
        stdlib,
        os.path.join(stdlib, "lib-dynload"),
        _rule_programs(),
        xtables,
    )


def runtime_tag() -> str:
    """The image's tag: a digest of what goes in, from a few stat calls (the interpreter,
    the folders of its library and extensions, the rule programs), so that looking the
    image up on an engine costs nothing when it is there."""
    python, stdlib, dynload, programs, xtables = _sources()
    rules = (IMAGE_FORMAT, sorted(SKIPPED_STDLIB), SKIPPED_EXTENSIONS, RULE_PROGRAMS)
    hasher = hashlib.sha256(f"{rules} {sys.version}".encode())
    for path in (python, stdlib, dynload, *(t for _, t in programs), xtables or ""):
        try:
            info = os.stat(path)
        except OSError:
            continue
        hasher.update(f"{path} {info.st_size} {info.st_mtime_ns};".encode())
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    return f"{AGENT_REPOSITORY}:{version}-{hasher.hexdigest()[:16]}"


def parse_ldd(text: str) -> list[str]:
    """The libraries `ldd` names (absolute paths, the program interpreter included)."""
    found: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.endswith(":"):  # `ldd A B` heads each program's list with its name
            continue
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" (", 1)[0].strip()
        else:
            target = line.split(" (", 1)[0].strip()
        if target.startswith("/") and target not in found:
            found.append(target)
    return found


def shared_libraries(binaries: list[str]) -> list[str]:
    """What the dynamic loader maps for any of `binaries` (one `ldd` for all of them; a
    static one adds nothing)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        raise MissingToolError("ldd is missing (Debian: apt-get install libc-bin)")
    done = subprocess.run([ldd, *binaries], capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0 and "not a dynamic executable" not in done.stdout + done.stderr:
        raise FlowtraceError(f"ldd: {(done.stderr or done.stdout).strip()[:200]}")
    return parse_ldd(done.stdout)


def stdlib_modules(stdlib: str) -> Iterator[tuple[str, str]]:
    """(module file, path relative to the library) of every standard module an agent may
    import, skipping the folders in SKIPPED_STDLIB."""
    for folder, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_STDLIB and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield path, os.path.relpath(path, stdlib)


def compiled(source: str) -> bytes:
    """A module compiled as a sourceless .pyc: the interpreter's own cached copy when it is
    current, else compiled now (the header's source stamp is never checked without a
    source beside it)."""
    import importlib.util
    import marshal

    cached = importlib.util.cache_from_source(source)
    try:
        with open(cached, "rb") as handle:
            data = handle.read()
        info = os.stat(source)
        if (
            data[:4] == importlib.util.MAGIC_NUMBER
            and int.from_bytes(data[8:12], "little") == int(info.st_mtime) & 0xFFFFFFFF
        ):
            return data
    except OSError:
        pass
    with open(source, "rb") as handle:
        code = compile(handle.read(), source, "exec", dont_inherit=True)
    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little") + bytes(8)
    return header + marshal.dumps(code)


def _extension_modules(dynload: str) -> list[str]:
    if not os.path.isdir(dynload):
        return []
    return [
        os.path.join(dynload, name)
        for name in sorted(os.listdir(dynload))
        if name.endswith(".so") and not name.startswith(SKIPPED_EXTENSIONS)
    ]


def _rule_programs() -> list[tuple[str, str]]:
    """(name, the file it resolves to) of iptables-save and ip6tables-save, when present."""
    found = []
    for name in RULE_PROGRAMS:
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
        if path is not None:
            found.append((name, os.path.realpath(path)))
    return found


def agent_runtime() -> AgentRuntime:
    """The files of the helper's image, read from this machine's Python and iptables."""
    python, stdlib, dynload, programs, xtables = _sources()
    files: dict[str, ImageFile] = {}
    binaries = [python, *_extension_modules(dynload)]
    binaries += sorted({target for _, target in programs})
    if xtables is not None:
        binaries += [
            os.path.join(xtables, n) for n in sorted(os.listdir(xtables)) if n.endswith(".so")
        ]
    for binary in binaries:
        files[binary] = ImageFile(binary, source=binary, mode=0o755)
    for library in shared_libraries(binaries):
        files.setdefault(library, ImageFile(library, source=os.path.realpath(library), mode=0o755))
    for name, target in programs:
        link = f"/usr/sbin/{name}"
        if link != target:
            files[link] = ImageFile(link, link=target, mode=0o777)
    for source, relative in stdlib_modules(stdlib):
        path = os.path.join(stdlib, relative) + "c"
        files[path] = ImageFile(path, source=source)
    files[AGENT_PYTHON] = ImageFile(AGENT_PYTHON, link=python, mode=0o777)
    folders = {os.path.dirname(f.path) for f in files.values() if ".so" in f.path}
    return AgentRuntime(
        AGENT_PYTHON, sys.base_prefix, tuple(files.values()), tuple(sorted(folders))
    )


def build_tar(runtime: AgentRuntime, *, compress: bool) -> bytes:
    """The image's root filesystem as a tar (gzip level 1 when `compress`)."""
    import gzip
    import tarfile

    buffer = io.BytesIO()
    made: set[str] = set()

    def parents(tar: tarfile.TarFile, path: str) -> None:
        parts = path.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            name = "/".join(parts[:depth])
            if name not in made:
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                made.add(name)

    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, mode in (("tmp", 0o1777), ("proc", 0o755), ("dev", 0o755), ("sys", 0o755)):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info)
            made.add(name)
        for item in sorted(runtime.files, key=lambda f: f.path):
            parents(tar, item.path)
            info = tarfile.TarInfo(item.path.strip("/"))
            info.mode = item.mode
            if item.link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = item.link
                tar.addfile(info)
                continue
            if item.path.endswith(".pyc") and item.source is not None:
                data = compiled(item.source)
            elif item.data is not None:
                data = item.data
            else:
                assert item.source is not None
                with open(item.source, "rb") as handle:
                    data = handle.read()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    return gzip.compress(raw, compresslevel=1) if compress else raw


def check_architecture(engine_info: dict[str, Any], host: str) -> None:
    """The image holds this machine's binaries: the engine must run on the same type."""
    here = platform.machine()
    theirs = str(engine_info.get("Architecture", ""))
    if theirs and theirs not in ENGINE_ARCHITECTURES.get(here, (here,)):
        raise FlowtraceError(
            f"host {host} runs on {theirs} and this machine on {here}: flowtrace's helper "
            "image is made of this machine's own Python, so it needs the same machine type"
        )


def image_on_engine(client: Any, tag: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(tag)
    except ImageNotFound:
        return False
    return True


def ensure_agent_image(client: Any, host: str, *, compress: bool = True) -> tuple[str, bool]:
    """The helper image's tag on this engine, imported when missing; (tag, imported now).

    `compress`: gzip the tar on its way (worth it over a network, not over a local socket).
    """
    tag = runtime_tag()
    if image_on_engine(client, tag):
        return tag, False
    runtime = agent_runtime()
    repository, _, version = tag.partition(":")
    client.api.import_image_from_data(
        build_tar(runtime, compress=compress),
        repository=repository,
        tag=version,
        changes=[
            f"LABEL {AGENT_LABEL}=1",
            f"ENV PYTHONHOME={runtime.home}",
            "ENV PYTHONDONTWRITEBYTECODE=1",
            f"ENV LD_LIBRARY_PATH={':'.join(runtime.library_path)}",
            "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        ],
    )
    if not image_on_engine(client, tag):
        raise FlowtraceError(f"host {host}'s engine did not keep the imported image {tag}")
    return tag, True


def keeps_agent_image(info: dict[str, Any]) -> bool:
    """The engine (its `docker info`) is one of the lab's hosts, where the image may stay."""
    return KEEP_IMAGE_ENGINE_LABEL in (info.get("Labels") or ())


def agent_images(client: Any) -> Iterable[Any]:
    """The helper images flowtrace left on an engine (to remove them)."""
    return client.images.list(filters={"label": f"{AGENT_LABEL}=1"})
