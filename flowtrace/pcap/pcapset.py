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
import errno
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from glob import glob, has_magic
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowtrace.errors import CaptureFormatError, FlowtraceError, NotFoundError, SetWriteError
from flowtrace.pcap.manifest_schema import MAX_MANIFEST_BYTES, ManifestShapeError, check_manifest
from flowtrace.pcap.openfile import kind_of, open_for_reading, refuse_special
from flowtrace.pcap.ownership import FOLDER_MODE, create_private, hand_over, own_folder
from flowtrace.pcap.writefail import NO_SPACE, Reserve, cannot_start, explain

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
    The folder is the set's owner's alone (pcap.ownership).
    """
    base_dir = Path(DEFAULT_BASE if base is None else base)
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    stem = f"{moment:%Y%m%dT%H%M%SZ}-{safe_name(src)}-{safe_name(dst)}"
    if base_dir.exists() and not base_dir.is_dir():
        raise FlowtraceError(f"{base_dir}: cannot create a capture folder: it is not a folder")
    try:
        if not base_dir.is_dir():
            base_dir.mkdir(parents=True, exist_ok=True)
            hand_over(base_dir)
        number = 1
        while True:
            candidate = base_dir / (stem if number == 1 else f"{stem}-{number}")
            try:
                candidate.mkdir(mode=FOLDER_MODE)
            except FileExistsError:
                number += 1
                continue
            own_folder(candidate)
            return candidate
    except OSError as err:
        raise SetWriteError(cannot_start(err.errno or 0, base_dir), err.errno or 0) from None


def claim_set_dir(path: Path | str) -> Path:
    """Use a folder the user named (-o DIR) for a new set, refusing to overwrite one.

    A folder flowtrace makes is the set's owner's alone; one that exists keeps its mode.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise FlowtraceError(f"{folder}: exists and is not a folder")
    if folder.is_dir() and ((folder / MANIFEST_NAME).exists() or _capture_files_in(folder)):
        raise FlowtraceError(f"{folder}: already holds captures; choose another folder")
    try:
        if not folder.is_dir():
            folder.mkdir(parents=True, mode=FOLDER_MODE)
            own_folder(folder)
    except OSError as err:
        raise SetWriteError(cannot_start(err.errno or 0, folder), err.errno or 0) from None
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
    """Write manifest.json (path: the set folder or the file) atomically: tmp file + os.replace.

    The file is the set's owner's alone (0600); SetWriteError carries the errno.
    """
    target = _manifest_file(path)
    text = json.dumps(manifest, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fd = create_private(temporary)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except OSError as err:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise SetWriteError(
            f"{target}: cannot write the manifest: {err.strerror}", err.errno or 0
        ) from None


def read_manifest(path: Path | str) -> dict[str, Any] | None:
    """The manifest of a set (path: the folder or the file), or None when there is none.

    Checked before anyone reads a field of it: a regular file (a FIFO would block), at
    most MAX_MANIFEST_BYTES, JSON no deeper than MAX_DEPTH, every field flowtrace reads
    of the shape it writes (manifest_schema); CaptureFormatError names what is wrong.
    """
    target = _manifest_file(path)
    try:
        handle = open_for_reading(target)
    except NotFoundError:
        return None
    except FlowtraceError as err:
        if isinstance(err, CaptureFormatError):
            raise
        raise CaptureFormatError(f"cannot read the manifest: {err.message}") from None
    with handle:
        try:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
        except OSError as err:
            raise CaptureFormatError(f"{target}: cannot read the manifest: {err}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise CaptureFormatError(
            f"{target}: larger than {MAX_MANIFEST_BYTES >> 20} MiB, more than any manifest "
            "flowtrace writes"
        )
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise CaptureFormatError(f"{target}: not UTF-8 text ({err.reason})") from None
    except json.JSONDecodeError as err:
        raise CaptureFormatError(
            f"{target}: not valid JSON ({err.msg} at line {err.lineno})"
        ) from None
    except RecursionError:
        raise CaptureFormatError(f"{target}: JSON nested deeper than Python can read") from None
    except ValueError:  # an integer of more digits than int() takes (sys.int_info)
        raise CaptureFormatError(
            f"{target}: holds a number of more than {sys.get_int_max_str_digits():,} digits"
        ) from None
    if not isinstance(manifest, dict):
        raise CaptureFormatError(f"{target}: a manifest must be a JSON object")
    try:
        check_manifest(manifest)
    except ManifestShapeError as err:
        raise CaptureFormatError(f"{target}: {err}") from None
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
        try:
            manifest = read_manifest(path)
        except CaptureFormatError:
            manifest = None  # the reader says what is wrong with it; the files are still there
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
    if path.exists():
        raise refuse_special(path, kind_of(path.stat().st_mode) or "not a regular file")
    raise NotFoundError(f"{path}: no such file or folder")


def point_entry(point: Point) -> dict[str, Any]:
    """How a manifest describes a point; its position in the list is its pcapng interface id."""
    return {
        "id": point.id,
        "host": point.netns.host,
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
    capture file is created and held open here (`capture_fd`, O_APPEND: the recorder and
    the capture engine append whole blocks to it), the manifest is written when
    recording starts and rewritten atomically as it goes, so a reader always finds a
    whole manifest, and `discard` takes back a set that never started.  Everything is
    the owner's alone (pcap.ownership).

    When a write fails (`failed`), the recording stops and `finish` still describes the
    set: room reserved at the start takes the last manifest on a full disk, and a folder
    removed under the recording is made again with what the open capture file holds.
    """

    def __init__(self, directory: Path, capture_file: str, made_folder: bool) -> None:
        self.directory = directory
        self.capture_path = directory / capture_file
        self.manifest_path = directory / MANIFEST_NAME
        self._made_folder = made_folder
        self.manifest: dict[str, Any] = {}
        self.capture_fd: int | None = None
        self._reserve = Reserve(directory)
        self._identity = _identity(directory)
        #: The first write that failed, once one has.
        self.failure: SetWriteError | None = None
        #: Why the last manifest could not be written, if it could not.
        self.manifest_problem: str | None = None

    @classmethod
    def create(
        cls, output_dir: Path | str | None, src_label: str, dst_label: str, capture_file: str
    ) -> PcapSet:
        """A new folder under captures/ (output_dir None), or the user's, claimed; its
        capture file created, empty, and held open."""
        if output_dir is None:
            pcap_set = cls(new_set_dir(None, src_label, dst_label), capture_file, True)
        else:
            made = not Path(output_dir).exists()
            pcap_set = cls(claim_set_dir(output_dir), capture_file, made)
        try:
            pcap_set.capture_fd = create_private(pcap_set.capture_path, os.O_APPEND, readable=True)
        except OSError as err:
            pcap_set.discard()
            code = err.errno or 0
            raise SetWriteError(cannot_start(code, pcap_set.directory), code) from None
        return pcap_set

    def start(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        self.save()
        self._reserve.take()

    def update(self, **fields: Any) -> None:
        self.manifest.update(fields)
        self.save()

    def save(self) -> None:
        try:
            write_manifest(self.manifest_path, self.manifest)
        except SetWriteError as err:
            self.failed(err.errno)
            raise

    def failed(self, err_no: int) -> SetWriteError:
        """Note the first failed write (of the capture file or the manifest)."""
        if self.failure is None:
            if self.folder_gone():
                err_no = errno.ENOENT
            self.failure = SetWriteError(f"cannot write {self.directory}", err_no)
        return self.failure

    def folder_gone(self) -> bool:
        """The set's folder was removed (or replaced) since the set was made."""
        return _identity(self.directory) != self._identity

    def finish(self, stats: Sequence[PointStats], *, complete: bool = True, **extra: Any) -> None:
        """The last manifest: counters, end time, `complete`; `error` when a write failed.

        After a failed write the reserved room is given back first; when even then the
        whole manifest does not fit, one without the per-probe and per-rewrite records
        is written (they are what grows with the run).
        """
        if self.failure is not None:
            complete = False
        dropped = [f"{s.point} ({s.drops:,})" for s in stats if s.drops]
        if dropped:  # the set lacks what the kernel could not hand over in time
            complete = False
            extra.setdefault(
                "incomplete", f"the kernel dropped packets before capture: {', '.join(dropped)}"
            )
        self.manifest = finish_manifest(self.manifest, stats, complete=complete, **extra)
        self._reserve.release()
        if self.folder_gone():
            self._restore()
        try:
            write_manifest(self.manifest_path, self.manifest)
        except SetWriteError as err:
            self.failed(err.errno)
            if err.errno not in NO_SPACE:
                # the manifest written at the start stays, and says complete: false
                self.manifest_problem = os.strerror(err.errno) if err.errno else "write failed"
                return
            slim = {k: v for k, v in self.manifest.items() if k not in _GROWING}
            slim["left_out"] = sorted(k for k in _GROWING if k in self.manifest)
            try:
                write_manifest(self.manifest_path, slim)
            except SetWriteError:
                self.manifest_problem = "no space left even for a short one"
                return
            self.manifest = slim

    def failure_message(self, packets: int) -> str | None:
        """The one line that ends a recording whose set could not be written to its end."""
        if self.failure is None:
            return None
        line = explain(self.failure.errno, self.directory, self.capture_path, packets)
        if self.manifest_problem:
            line = line.replace(
                "its manifest says complete: false",
                f"its manifest could not be rewritten ({self.manifest_problem}) and still says "
                "complete: false, as written at the start",
            )
        return line

    def _restore(self) -> None:
        """Make the removed folder again and copy into it what the open capture file holds."""
        try:
            self.directory.mkdir(parents=True, mode=FOLDER_MODE)
            own_folder(self.directory)
            self._identity = _identity(self.directory)
            if self.capture_fd is not None:
                target = create_private(self.capture_path)
                try:
                    size = os.fstat(self.capture_fd).st_size
                    offset = 0
                    while offset < size:
                        sent = os.sendfile(target, self.capture_fd, offset, size - offset)
                        if sent == 0:
                            break
                        offset += sent
                finally:
                    os.close(target)
        except OSError as err:
            raise SetWriteError(
                f"{self.directory}: the set's folder was removed during the recording, and "
                f"cannot be made again ({err.strerror}): nothing recorded could be kept",
                err.errno or 0,
            ) from None

    def close(self) -> None:
        """Close the capture file (the set stays)."""
        if self.capture_fd is not None:
            os.close(self.capture_fd)
            self.capture_fd = None

    def discard(self) -> None:
        """Remove what a recording that never started left (the user's own folder stays)."""
        self.close()
        self._reserve.release()
        for path in (self.capture_path, self.manifest_path):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        if self._made_folder:
            with contextlib.suppress(OSError):
                self.directory.rmdir()


#: Manifest fields that grow with the run (left out of a last manifest that does not fit).
_GROWING = ("verdicts", "nat", "proxy", "faults")


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(folder)
    except OSError:
        return None
    return info.st_dev, info.st_ino
