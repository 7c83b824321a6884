"""What a set's manifest.json may hold, checked before any reader trusts a field of it.

A manifest comes from disk, so it may be anything: a hand edit, another tool's file, a
hostile one.  Readers (analyze, load, plot) use a field only after `check_manifest`
has said it has the shape flowtrace writes; a wrong one is named by its path
(`points[2].id: expected a string, found a number`).  Fields are only ever added to
the format, so keys this schema does not know pass unchecked, but the whole document
is bounded in size (MAX_MANIFEST_BYTES) and depth (MAX_DEPTH) first.

Written by hand, not with jsonschema: the check is a few dozen lines over a handful of
types, flowtrace has no JSON-schema library among its dependencies, and the messages
name the field in the words above.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

#: A manifest larger than this is refused unread (a 100,000-probe trace writes ~40 MB).
MAX_MANIFEST_BYTES = 64 << 20
#: Nesting deeper than this is refused: flowtrace writes five levels at most.
MAX_DEPTH = 32
#: Integers flowtrace writes fit in 64 bits (times in ns, counters, packet ids).
MAX_INT = (1 << 63) - 1


class ManifestShapeError(ValueError):
    """A manifest field of the wrong shape; the message names it."""


Check = Callable[[Any, str], None]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _fail(path: str, wanted: str, value: Any) -> None:
    raise ManifestShapeError(f"{path}: expected {wanted}, found {_kind(value)}")


def text(value: Any, path: str) -> None:
    if not isinstance(value, str):
        _fail(path, "a string", value)


def integer(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, "a whole number", value)
    if not -MAX_INT <= value <= MAX_INT:
        raise ManifestShapeError(f"{path}: {len(str(value))}-digit number, beyond 64 bits")


def count(value: Any, path: str) -> None:
    integer(value, path)
    if value < 0:
        raise ManifestShapeError(f"{path}: expected a count, found {value}")


def flag(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        _fail(path, "true or false", value)


def optional(check: Check) -> Check:
    def checked(value: Any, path: str) -> None:
        if value is not None:
            check(value, path)

    return checked


def list_of(check: Check) -> Check:
    def checked(value: Any, path: str) -> None:
        if not isinstance(value, list):
            _fail(path, "a list", value)
        for index, item in enumerate(value):
            check(item, f"{path}[{index}]")

    return checked


def one_of(*checks: Check, wanted: str) -> Check:
    def checked(value: Any, path: str) -> None:
        for check in checks:
            try:
                check(value, path)
            except ManifestShapeError:
                continue
            return
        _fail(path, wanted, value)

    return checked


def obj(fields: Mapping[str, Check], required: tuple[str, ...] = ()) -> Check:
    """An object whose known keys have these shapes (unknown keys pass)."""

    def checked(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            _fail(path, "an object", value)
        for key in required:
            if key not in value:
                raise ManifestShapeError(f"{path}: no {key!r}")
        for key, check in fields.items():
            if key in value:
                check(value[key], f"{path}.{key}")

    return checked


def file_name(value: Any, path: str) -> None:
    """A file in the set's own folder: no path, no way out of the folder."""
    text(value, path)
    if not value or "/" in value or "\0" in value or value in (".", ".."):
        raise ManifestShapeError(f"{path}: {value!r} is not a file name in the set's folder")


_ADDRESS = obj({"ip": text, "port": optional(integer)}, required=("ip",))

POINT = obj(
    {
        "id": text,
        "netns": optional(text),
        "netns_path": optional(text),
        "container": optional(text),
        "ifname": optional(text),
        "ifindex": optional(integer),
        "role": optional(text),
        "description": optional(text),
        "linktype": optional(integer),
        "mac": optional(text),
        "addresses": list_of(text),
        "packets": optional(count),
        "drops": optional(count),
    },
    required=("id",),
)

NAT = obj(
    {
        "packet": integer,
        "probe": optional(integer),
        "kind": text,
        "between": list_of(text),
        "before": _ADDRESS,
        "after": _ADDRESS,
        "rule": optional(text),
        "conntrack": optional(text),
        "reverse_of": optional(text),
    }
)

FAULT = obj(
    {
        "time_ns": integer,
        "kind": text,
        "subject": text,
        "text": text,
        "points": list_of(text),
        "exit_code": optional(integer),
    }
)

VERDICT = one_of(
    text,
    obj(
        {
            "probe": integer,
            "outcome": text,
            "last_point": optional(text),
            "detail": optional(text),
            "rule": optional(text),
            "rtt_ns": optional(integer),
            "text": optional(text),
            "fault": optional(FAULT),
        }
    ),
    wanted="a verdict (an object, or its text)",
)

STATS = obj({"point": text, "packets": optional(count), "drops": optional(count)})

MANIFEST = obj(
    {
        "format": text,
        "flowtrace": text,
        "kind": text,
        "command": optional(text),
        "pcapng": file_name,
        "count": optional(count),
        "complete": flag,
        "interrupted": optional(flag),
        "points": list_of(POINT),
        "verdicts": list_of(VERDICT),
        "nat": list_of(NAT),
        "notes": list_of(text),
        "stats": list_of(STATS),
        "faults": list_of(FAULT),
        "proxy": optional(obj({})),
        "error": optional(text),
    }
)


def depth_of(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deep `value` nests (stops counting past `limit`), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > deepest:
            deepest = level
            if deepest > limit:
                return deepest
        if isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
    return deepest


def check_manifest(manifest: Any) -> None:
    """Raise ManifestShapeError naming the first field of the wrong shape."""
    if depth_of(manifest) > MAX_DEPTH:
        raise ManifestShapeError(f"nested deeper than {MAX_DEPTH} levels")
    MANIFEST(manifest, "manifest")
    points = manifest.get("points") or []
    seen: dict[str, int] = {}
    for index, entry in enumerate(points):
        earlier = seen.setdefault(entry["id"], index)
        if earlier != index:
            raise ManifestShapeError(
                f"manifest.points[{index}].id: {entry['id']!r} is points[{earlier}] again"
            )
