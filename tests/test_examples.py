"""The programs in examples/ run as a user runs them, and do what their output says.

Each runs in its own interpreter with the repository on the path; the checks read its
output. (mypy and pyright check the examples with the rest of the tree.)
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Final

import pytest
from host_assumptions import needs_8_byte_atomics
from support import ROOT, run_python

EXAMPLES: Final = ROOT / "examples"


def run_example(name: str) -> str:
    result = run_python(str(EXAMPLES / name))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda path: path.name)
def test_every_example_has_a_docstring_and_a_main(path: Path) -> None:
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path.name} has no module docstring"
    assert any(isinstance(node, ast.FunctionDef) and node.name == "main"
               for node in tree.body), f"{path.name} has no main()"


@needs_8_byte_atomics
def test_generic_access_runs_the_whole_table_everywhere() -> None:
    rows = [line.split() for line in run_example("generic_access.py").splitlines()]
    assert rows[0] == ["operation", "GuestMemoryMmap", "DeviceRegion", "FileRegion"]
    table = {" ".join(row[:-3]): row[-3:] for row in rows[1:]}
    plain = ["write_slice / read_bytes", "write_obj / read_obj", "*_obj_unaligned"]
    atomic = ["write_atomic / read_atomic", "fetch_add", "compare_exchange", "swap"]
    assert list(table) == plain + atomic
    for name in plain:
        assert table[name] == ["ok", "ok", "ok"], name
    for name in atomic:
        assert table[name] == ["ok", "ok", "AtomicAccessUnsupported"], name


@needs_8_byte_atomics
def test_vhost_user_backend_serves_every_request_from_another_process() -> None:
    out = run_example("vhost_user_backend.py")
    backend = re.search(r"backend\[(\d+)\]: mapped 2 regions: 0x0\+0x100000, "
                        r"0x100000\+0x100000", out)
    assert backend is not None, out
    assert int(backend[1]) != os.getpid()
    for number, text in enumerate(("hello, vhost-user", "guest memory is shared",
                                   "no copies on the socket"), 1):
        assert f"backend: request {number}: {text!r} -> {text.upper()!r}" in out
        assert f"vmm: reply {number}: {text.upper()!r} ({len(text)} bytes)" in out
    assert out.rstrip().endswith("vmm: back-end exited with status 0")


def test_dirty_tracking_loop_converges_and_copies_exactly() -> None:
    out = run_example("dirty_tracking_loop.py")
    lines = out.splitlines()
    assert lines[0] == "round 0: copied all 2048 pages"
    rounds = [int(match[1]) for line in lines
              if (match := re.fullmatch(r"round \d+: (\d+) dirty pages copied", line))]
    assert rounds, out
    assert any(line.startswith("stop-and-copy: writer paused after ") for line in lines)
    stale = re.search(r"a single copy without the dirty log would have left (\d+) stale", out)
    assert stale is not None and int(stale[1]) > 0, out  # the log is what made it exact
    assert lines[-1] == "verified: destination equals source (2048 pages)"
