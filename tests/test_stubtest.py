"""The stubs agree with the run time: `mypy.stubtest` over the whole package, with the
deliberate differences listed (and explained) in stubs/stubtest_allowlist.txt."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import ROOT

from vm_memory import access_path

pytestmark = pytest.mark.type_checker  # not in the runtime suite run on foreign ports


def test_stubtest_is_clean() -> None:
    """On whichever access path runs; on the pure one, the entries that describe the
    compiled path's base types have nothing to match (they are checked in the compiled
    run, which CI always has)."""
    unused = ["--ignore-unused-allowlist"] if access_path().name == "pure" else []
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "vm_memory", "--allowlist",
         str(ROOT / "stubs" / "stubtest_allowlist.txt"), *unused],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_endian_stub_is_the_one_in_the_package() -> None:
    """stubs/ is the source; the package carries the same file where checkers read it."""
    source = ROOT / "stubs" / "vm_memory" / "endian.pyi"
    packaged = ROOT / "vm_memory" / "endian.pyi"
    assert packaged.read_bytes() == source.read_bytes()
