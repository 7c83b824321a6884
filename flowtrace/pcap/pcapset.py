"""A pcap set: one folder per trace or capture, holding the pcapng and manifest.json.

``captures/<UTC time>-<src>-<dst>/`` (or a folder the user names with -o) holds
``trace.pcapng`` or ``capture.pcapng`` and ``manifest.json``: the command, the
endpoints, the observation points (in the order of the pcapng's interfaces), the
versions, start and end times and per-point packet and drop counts.

Ctrl-C safety: the manifest is written when recording starts with
``"complete": false`` and rewritten when it ends; each write replaces the file
atomically, so a reader sees the old manifest or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from glob import glob, has_magic
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowtrace.errors import CaptureFormatError, FlowtraceError, NotFoundError

if TYPE_CHECKING:
    from flowtrace.model import Point, PointStats

MANIFEST_NAME = "manifest.json"
TRACE_FILE = "trace.pcapng"
CAPTURE_FILE = "capture.pcapng"
#: 2: verdicts as records (correlate.verdicts.verdict_record); 1 kept str(Verdict).
MANIFEST_FORMAT = "flowtrace-pcapset/2"
#: The manifest key naming the set's capture file (relative to the folder).
MANIFEST_CAPTURE_KEY = "pcapng"
CAPTURE_SUFFIXES = (".pcapng", ".pcap", ".cap")
DEFAULT_BASE = "captures"
#: Python libraries whose versions a manifest records (read from package metadata, not imported).
RECORDED_LIBRARIES = ("scapy", "pyroute2", "docker")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, limit: int = 40) -> str:
    """A fragment safe in a file name on any filesystem: `netns:lab` -> `netns_lab`."""
    cleaned = _UNSAFE.sub("_", text).strip("._-")[:limit].rstrip("._-")
    return cleaned or "x"


def new_set_dir(base: Path | str | None, src: str, dst: str, now: datetime | None = None) -> Path:
    """Create and return a new, empty set folder `<base>/<UTC time>-<src>-<dst>`.

    The base defaults to `captures` under the current directory.  An existing
    folder is never reused: a second set in the same second gets a `-2` suffix.
    """
    base_dir = Path(DEFAULT_BASE if base is None else base)
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    stem = f"{moment:%Y%m%dT%H%M%SZ}-{safe_name(src)}-{safe_name(dst)}"
    try:
        base_dir.mkdir(parents=True, exist_ok=True)
        number = 1
        while True:
            candidate = base_dir / (stem if number == 1 else f"{stem}-{number}")
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                number += 1
    except OSError as err:
        raise FlowtraceError(
            f"{base_dir}: cannot create a capture folder: {err.strerror}"
        ) from None


def claim_set_dir(path: Path | str) -> Path:
    """Use a folder the user named (-o DIR) for a new set, refusing to overwrite one."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise FlowtraceError(f"{folder}: exists and is not a folder")
    if folder.is_dir() and ((folder / MANIFEST_NAME).exists() or _capture_files_in(folder)):
        raise FlowtraceError(f"{folder}: already holds captures; choose another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FlowtraceError(f"{folder}: cannot create folder: {err.strerror}") from None
    return folder


def _manifest_file(path: Path | str) -> Path:
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    raise TypeError(f"manifest value of type {type(value).__name__} is not JSON")


def write_manifest(path: Path | str, manifest: Mapping[str, Any]) -> None:
    """Write manifest.json (path: the set folder or the file) atomically: tmp file + os.replace."""
    target = _manifest_file(path)
    text = json.dumps(manifest, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise FlowtraceError(f"{target}: cannot write the manifest: {err.strerror}") from None


def read_manifest(path: Path | str) -> dict[str, Any] | None:
    """The manifest of a set (path: the folder or the file), or None when there is none."""
    target = _manifest_file(path)
    try:
        text = target.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise CaptureFormatError(f"{target}: cannot read the manifest: {err}") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise CaptureFormatError(
            f"{target}: not valid JSON ({err.msg} at line {err.lineno})"
        ) from None
    if not isinstance(manifest, dict):
        raise CaptureFormatError(f"{target}: a manifest must be a JSON object")
    return manifest


def _capture_files_in(folder: Path) -> list[Path]:
    return sorted(
        child
        for child in folder.iterdir()
        if child.is_file() and child.suffix in CAPTURE_SUFFIXES and not child.name.startswith(".")
    )


def find_capture_files(path: Path | str) -> list[Path]:
    """The capture files a user means by a path.

    A file is itself; a set folder is the capture file its manifest names (else
    trace.pcapng or capture.pcapng); any other folder is every pcapng/pcap in it;
    a glob pattern (`caps/*.pcap`) is the files it matches.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        manifest = read_manifest(path)
        named = manifest.get(MANIFEST_CAPTURE_KEY) if manifest else None
        for name in (named, TRACE_FILE, CAPTURE_FILE):
            if isinstance(name, str) and (path / name).is_file():
                return [path / name]
        files = _capture_files_in(path)
        if not files:
            raise NotFoundError(f"{path}: no pcapng or pcap files in this folder")
        return files
    if has_magic(str(path)):
        matches = sorted(Path(match) for match in glob(str(path)) if Path(match).is_file())
        if matches:
            return matches
        raise NotFoundError(f"{path}: no file matches")
    raise NotFoundError(f"{path}: no such file or folder")


def point_entry(point: Point) -> dict[str, Any]:
    """How a manifest describes a point; its position in the list is its pcapng interface id."""
    return {
        "id": point.id,
        "netns": point.netns.label,
        "netns_path": point.netns.path,
        "container": point.netns.container,
        "ifname": point.ifname,
        "ifindex": point.ifindex,
        "role": point.role,
        "description": point.description,
        "linktype": point.linktype,
        "mac": point.mac,
        "addresses": list(point.addresses),
    }


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape what is recorded.

    Read from the names of the installed `NAME-VERSION.dist-info` folders (the layout
    the packaging spec fixes for installed projects) on sys.path; importlib.metadata,
    which reads the same folders, costs 10 ms of a 0.3 s trace to import and is only
    asked for a library installed another way.
    """
    import platform

    versions = {"python": platform.python_version()}
    wanted = {name: f"{name}-" for name in RECORDED_LIBRARIES}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for folder in names:
            if not folder.endswith(".dist-info"):
                continue
            for name, prefix in wanted.items():
                version = folder[len(prefix) : -len(".dist-info")]
                if (
                    name not in versions
                    and folder.lower().startswith(prefix)
                    and "-" not in version
                ):
                    versions[name] = version
    missing = [name for name in RECORDED_LIBRARIES if name not in versions]
    if missing:
        from importlib import metadata

        for name in missing:
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
    return {"python": versions.pop("python"), **dict(sorted(versions.items()))}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def start_manifest(
    kind: str, command: str, capture_file: str, points: Sequence[Point], **fields: Any
) -> dict[str, Any]:
    """The manifest written when recording starts (complete: false).

    kind: what wrote the set ("icmp", "tcp", "udp", "dns" for a trace; "capture");
    `fields`: what that kind adds (endpoints, filter, count, notes...).
    """
    import platform

    from flowtrace._version import __version__

    return {
        "format": MANIFEST_FORMAT,
        "flowtrace": __version__,
        "kind": kind,
        "command": command,
        MANIFEST_CAPTURE_KEY: capture_file,
        "kernel": os.uname().release,
        "python": platform.python_version(),
        "versions": library_versions(),
        **fields,
        "points": [point_entry(p) for p in points],
        "started": _now(),
        "complete": False,
    }


def finish_manifest(
    manifest: Mapping[str, Any],
    stats: Sequence[PointStats],
    *,
    complete: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """A copy of the start manifest marked complete, with end time and per-point counters."""
    by_point = {entry.point: entry for entry in stats}
    points = []
    for entry in manifest.get("points", []):
        counters = by_point.get(entry.get("id"))
        if counters is not None:
            entry = {**entry, "packets": counters.packets, "drops": counters.drops}
        points.append(entry)
    return {
        **manifest,
        "points": points,
        "stats": [
            {"point": s.point, "packets": s.packets, "drops": s.drops, "bytes": s.bytes}
            for s in stats
        ],
        "ended": _now(),
        **extra,
        "complete": complete,
    }


class PcapSet:
    """One set folder being written: where it is, its capture file, its manifest.

    The one writer of a set's folder and manifest, for traces and captures alike: the
    folder is made new (or a user's -o folder claimed, never one holding a set), the
    manifest is written when recording starts and rewritten atomically as it goes, so
    a reader always finds a whole manifest, and `discard` takes back a set that never
    started.
    """

    def __init__(self, directory: Path, capture_file: str, made_folder: bool) -> None:
        self.directory = directory
        self.capture_path = directory / capture_file
        self.manifest_path = directory / MANIFEST_NAME
        self._made_folder = made_folder
        self.manifest: dict[str, Any] = {}

    @classmethod
    def create(
        cls, output_dir: Path | str | None, src_label: str, dst_label: str, capture_file: str
    ) -> PcapSet:
        """A new folder under captures/ (output_dir None), or the user's, claimed."""
        if output_dir is None:
            return cls(new_set_dir(None, src_label, dst_label), capture_file, True)
        made = not Path(output_dir).exists()
        return cls(claim_set_dir(output_dir), capture_file, made)

    def start(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        self.save()

    def update(self, **fields: Any) -> None:
        self.manifest.update(fields)
        self.save()

    def save(self) -> None:
        write_manifest(self.manifest_path, self.manifest)

    def finish(self, stats: Sequence[PointStats], *, complete: bool = True, **extra: Any) -> None:
        self.manifest = finish_manifest(self.manifest, stats, complete=complete, **extra)
        self.save()

    def discard(self) -> None:
        """Remove what a recording that never started left (the user's own folder stays)."""
        for path in (self.capture_path, self.manifest_path):
            path.unlink(missing_ok=True)
        if self._made_folder:
            with contextlib.suppress(OSError):
                self.directory.rmdir()
