"""setup.py builds exactly the C modules flowtrace.native knows, from sources that exist."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from flowtrace import native

REPO = Path(__file__).resolve().parents[2]


def test_setup_builds_every_module_native_loads() -> None:
    tree = ast.parse((REPO / "setup.py").read_text())
    (assignment,) = [
        node
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "C_MODULES"
    ]
    modules = ast.literal_eval(assignment.value)
    assert [name for name, _ in modules] == list(native.MODULES)
    for name, source in modules:
        assert (REPO / source).is_file()
        assert source == name.replace(".", "/") + ".c"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler: nothing is built")
@pytest.mark.skipif(not native.enabled(), reason="FLOWTRACE_NATIVE=0 turns them off")
def test_every_module_is_built_where_there_is_a_compiler() -> None:
    """The set-up builds them all where gcc is (it installs gcc and the headers on Debian)."""
    assert [name for name in native.MODULES if native.load(name) is None] == []
