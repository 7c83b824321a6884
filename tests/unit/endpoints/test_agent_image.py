"""The helper's image made from this machine's Python: the libraries ldd names, the
standard library as sourceless bytecode, the machine type checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flowtrace.endpoints.agent_image import (
    AGENT_REPOSITORY,
    check_architecture,
    compiled,
    keeps_agent_image,
    parse_ldd,
    runtime_tag,
    stdlib_modules,
)
from flowtrace.errors import FlowtraceError

#: `ldd /usr/sbin/xtables-nft-multi /usr/lib/.../lib-dynload/_ctypes...so` on Debian 12.
LDD_TWO = """\
/usr/sbin/xtables-nft-multi:
\tlinux-vdso.so.1 (0x00007ffc4a1f2000)
\tlibxtables.so.12 => /lib/x86_64-linux-gnu/libxtables.so.12 (0x00007f5e0b1e0000)
\tlibmnl.so.0 => /lib/x86_64-linux-gnu/libmnl.so.0 (0x00007f5e0b1d8000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f5e0aff6000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f5e0b2a8000)
/root/.pyenv/versions/3.11.7/lib/python3.11/lib-dynload/_ctypes.cpython-311-x86_64-linux-gnu.so:
\tlinux-vdso.so.1 (0x00007ffd33bf6000)
\tlibffi.so.8 => /lib/x86_64-linux-gnu/libffi.so.8 (0x00007f1bd0d3c000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1bd0b5a000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f1bd0d6c000)
"""


def test_ldd_output_gives_each_library_once() -> None:
    assert parse_ldd(LDD_TWO) == [
        "/lib/x86_64-linux-gnu/libxtables.so.12",
        "/lib/x86_64-linux-gnu/libmnl.so.0",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/libffi.so.8",
    ]
    assert parse_ldd("\tstatically linked\n") == []


def test_a_module_compiled_without_source_imports(tmp_path: Path) -> None:
    source = tmp_path / "src" / "greeting.py"
    source.parent.mkdir()
    source.write_text("WORDS = 'hello from bytecode'\n")
    image = tmp_path / "image"
    image.mkdir()
    (image / "greeting.pyc").write_bytes(compiled(str(source)))
    done = subprocess.run(
        [sys.executable, "-S", "-c", "import greeting; print(greeting.WORDS, greeting.__file__)"],
        cwd=image,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.startswith("hello from bytecode")
    assert done.stdout.strip().endswith("greeting.pyc")


def test_the_standard_library_walk_leaves_tests_and_guis_out(tmp_path: Path) -> None:
    for name in (
        "os.py",
        "json/__init__.py",
        "test/test_os.py",
        "tkinter/__init__.py",
        "site-packages/docker/__init__.py",
        "__pycache__/os.cpython-311.pyc",
    ):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    found = sorted(relative for _, relative in stdlib_modules(str(tmp_path)))
    assert found == ["json/__init__.py", "os.py"]


def test_the_tag_names_this_python_and_stays_put() -> None:
    tag = runtime_tag()
    assert tag.startswith(f"{AGENT_REPOSITORY}:py{sys.version_info.major}{sys.version_info.minor}-")
    assert tag == runtime_tag()


def test_another_machine_type_is_refused() -> None:
    import platform

    here = platform.machine()
    check_architecture({"Architecture": here}, "hostb")
    check_architecture({}, "hostb")  # an engine that does not say
    with pytest.raises(FlowtraceError, match="same machine type"):
        check_architecture({"Architecture": "s390x"}, "hostb")


def test_only_the_labs_hosts_keep_the_helper_image() -> None:
    # `docker info`'s Labels as dockerd reports them (--label k=v)
    assert keeps_agent_image({"Labels": ["flowtrace.lab.host=1"]})
    assert not keeps_agent_image({"Labels": ["com.example.rack=4"]})
    assert not keeps_agent_image({"Labels": None}) and not keeps_agent_image({})
