"""The policy's denied imports hold in a container, whatever the route to the module:
the runner refuses to load it for the code (POLICY_VIOLATION naming the module), while
the standard library and the image's packages keep what they need. Through a real
server, under the built-in `default` policy (it denies ctypes, importlib,
_posixsubprocess, builtins, posix and nt)."""

from __future__ import annotations

import pytest

from sandbox_client import FailureKind
from tests.backends.container.conftest import Lab
from tests.conftest import failure_of

pytestmark = pytest.mark.docker


@pytest.mark.parametrize(
    "code",
    [
        "import _ctypes",  # ctypes' C half
        "import pydoc\npydoc.locate('ctypes')",
        "import pydoc\npydoc.locate('ctypes.util.find_library')",
        "import multiprocessing.sharedctypes",
        "from multiprocessing import sharedctypes",
        "import multiprocessing\nmultiprocessing.Value('i', 1)",
        "import pkgutil\npkgutil.resolve_name('ctypes')",
        "import pkgutil\npkgutil.resolve_name('ctypes.util:find_library')",
        "import runpy\nrunpy.run_module('ctypes')",
        # In a thread the code started, the result of the thread's own failure.
        "import pydoc, threading\nerrors = []\n"
        "def grab():\n    try:\n        pydoc.locate('ctypes')\n    except Exception as e:\n"
        "        errors.append(e)\nt = threading.Thread(target=grab)\nt.start()\nt.join()\n"
        "raise errors[0]",
    ],
    ids=[
        "_ctypes",
        "pydoc.locate",
        "pydoc.locate-attr",
        "sharedctypes",
        "from-sharedctypes",
        "multiprocessing.Value",
        "pkgutil.resolve_name",
        "pkgutil.resolve_name-colon",
        "runpy.run_module",
        "thread",
    ],
)
def test_every_route_to_a_denied_module_is_policy_violation(lab: Lab, code: str) -> None:
    failure = failure_of(lab.execute(code, policy="default"), FailureKind.POLICY_VIOLATION)
    assert failure.details["rule"] == "import" and failure.details["target"] == "ctypes"
    assert "'ctypes'" in failure.message and "forbidden by policy" in failure.message
    assert not failure.retryable


def test_a_refused_module_is_not_loaded_and_code_that_probes_goes_on(lab: Lab) -> None:
    code = """
import pydoc, sys
try:
    import _ctypes
except ImportError as exc:
    probed = str(exc)
try:
    pydoc.locate('ctypes')
except pydoc.ErrorDuringImport as exc:
    located = str(exc.value)
[probed, located, sorted(m for m in sys.modules if 'ctypes' in m)]
"""
    result = lab.execute(code, policy="default")
    assert result.ok, result.failure
    probed, located, loaded = result.result
    assert probed == "the sandbox policy denies importing 'ctypes' (_ctypes)"
    assert located == "the sandbox policy denies importing 'ctypes'"
    assert loaded == []


def test_what_the_standard_library_needs_still_loads(lab: Lab) -> None:
    # inspect, dataclasses and asyncio import importlib's submodules; subprocess imports
    # _posixsubprocess; zoneinfo loads importlib.resources when asked. Both are denied.
    code = """
import asyncio, dataclasses, inspect, subprocess, zoneinfo
await asyncio.sleep(0)
[subprocess.run(['true']).returncode, isinstance(zoneinfo.available_timezones(), set)]
"""
    result = lab.execute(code, policy="default")
    assert result.ok, result.failure
    assert result.result == [0, True]


def test_a_module_the_policy_allows_is_not_refused(lab: Lab) -> None:
    result = lab.execute("import pydoc\npydoc.locate('ctypes.c_int').__name__", policy="lab")
    assert result.ok, result.failure
    assert result.result == "c_int"
