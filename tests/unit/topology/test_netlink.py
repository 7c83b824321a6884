"""pyroute2 without its package __init__: what flowtrace's netlink reads rely on."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def run(code: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_message_classes_load_without_the_package_init() -> None:
    result = run(
        """
        import json, sys
        from flowtrace.topology import netlink
        classes = netlink._message_classes()
        print(json.dumps({
            "classes": sorted({c.__name__ for c in classes.values()}),
            "whole": "pyroute2.ndb" in sys.modules or "pyroute2.iproute" in sys.modules,
            "error": netlink.netlink_error().__name__,
        }))
        """
    )
    assert result == {
        "classes": ["ifaddrmsg", "ifinfmsg", "nsidmsg", "rtmsg"],
        "whole": False,
        "error": "NetlinkError",
    }


def test_the_whole_package_still_loads_when_its_names_are_asked_for() -> None:
    # The lab writes `from pyroute2 import IPRoute`: after the lean import that still works.
    result = run(
        """
        import json
        from flowtrace.topology import netlink
        netlink.lean_pyroute2()
        from pyroute2 import IPRoute, config
        import pyroute2
        print(json.dumps({"iproute": IPRoute.__name__, "config": config.__name__,
                          "version": bool(pyroute2.__version__)}))
        """
    )
    assert result == {"iproute": "IPRoute", "config": "pyroute2.config", "version": True}


def test_a_pyroute2_imported_whole_is_left_alone() -> None:
    result = run(
        """
        import json, pyroute2
        from flowtrace.topology import netlink
        netlink.lean_pyroute2()
        import sys
        print(json.dumps({"same": sys.modules["pyroute2"] is pyroute2,
                          "whole": hasattr(pyroute2, "IPRoute")}))
        """
    )
    assert result == {"same": True, "whole": True}
