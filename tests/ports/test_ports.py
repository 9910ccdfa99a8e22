"""The runtime on Debian's ports: the runtime suite runs green under each port's own
Python, and what each runtime reports equals the plugin's row for its target.

The tests marked `ports` build (or reuse) a Debian root per architecture and run under
qemu-user (`pytest -m ports tests/ports`; CI runs them as their own stage). The others
run on the host in the normal suite: the port table names plugin rows, the host's own
runtime agrees with its row, and the comparison catches and names a wrong figure.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import pytest
from support import unavailable
from vm_memory_mypy.targets import ARCHITECTURES, host_target, make_target

from .architectures import PORTS, Port
from .conftest import root_of
from .facts import disagreements, probe
from .roots import REPOSITORY, PortUnavailable, Root
from .suite import (
    SELECTION,
    SuiteResult,
    foreign_environment,
    ignored,
    run_suite,
    scope_from_environment,
)

README: Final = REPOSITORY / "README.md"
VERIFIED_COLUMN: Final = "verified on a real runtime"


def port_id(port: Port) -> str:
    return port.debian


def per_function(tests: Iterable[str]) -> Counter[str]:
    """How many tests each test function has (parameter ids may name platform values,
    such as a Structure's alignment)."""
    return Counter(test.partition("[")[0] for test in tests)


@functools.cache
def host_runtime_tests(paths: tuple[str, ...]) -> Counter[str]:
    """The runtime suite (or those of its files) as the host collects it: what every port
    must run."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", SELECTION, *ignored(),
         *paths],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return per_function(line for line in result.stdout.splitlines() if "::" in line)


@pytest.mark.ports
@pytest.mark.parametrize("port", PORTS, ids=port_id)
def test_the_runtime_suite_is_green(port: Port, test_packages: Path,
                                    report_summary: Callable[[str], None]) -> None:
    """Every runtime test passes or is skipped with a reason, and the port ran exactly
    the tests the host collects (none lost to an import error or a platform switch);
    the whole suite, or its `CORE` files on an emulated port where VM_MEMORY_PORTS_SUITE
    is `core`."""
    try:
        result = run_suite(root_of(port), test_packages, scope=scope_from_environment())
    except PortUnavailable as error:  # no cross compiler for the compiled path
        unavailable(str(error))
    report_summary(result.summary())
    assert result.green, f"{result.summary()}\n(the whole output: {result.log})"
    expected = host_runtime_tests(result.paths)
    ran = per_function({item["test"] for item in result.outcomes if item["when"] != "collect"})
    missing, extra = expected - ran, ran - expected
    assert not missing and not extra, (f"{port.debian} ran other tests than the host "
                                       f"collects: missing {dict(missing)}, "
                                       f"extra {dict(extra)}")
    for skipped in result.tests("skipped"):
        assert skipped["reason"], f"{skipped['test']} was skipped without a reason"


@pytest.mark.ports
@pytest.mark.parametrize("port", PORTS, ids=port_id)
def test_the_runtime_agrees_with_the_plugin_row(port: Port, test_packages: Path,
                                                report_summary: Callable[[str], None]) -> None:
    """Pointer, long, size_t and long double sizes, every scalar's alignments, the
    widest atomic and the refusals: the port's runtime reports the plugin's figures for
    the target the Debian architecture is (and the plugin reads the Debian name as it)."""
    root = root_of(port)
    target = make_target(port.target, "linux")
    assert make_target(port.debian, "linux") == target
    facts = probe([str(root.python)], foreign_environment(root, test_packages))
    assert facts["byteorder"] == ("big" if port.big_endian else "little")
    found = disagreements(target, facts)
    lock_free = sorted(int(width) for width, free in facts["libatomic_lock_free"].items()
                       if free)
    report_summary(f"{port.debian} = plugin target {target.describe()}: "
                   f"{len(found)} disagreements; {facts['byteorder']}-endian; "
                   f"libatomic lock-free widths {lock_free}")
    assert not found, f"{port.debian} ({target.describe()}): " + "; ".join(map(str, found))


# ---- On the host, in the normal suite -------------------------------------------------


@pytest.fixture(scope="module")
def host_facts() -> dict[str, Any]:
    return probe([sys.executable])


def test_every_port_is_a_plugin_target() -> None:
    for port in PORTS:
        assert port.target in ARCHITECTURES, port
        assert make_target(port.debian).architecture.name == port.target, port


def test_the_host_runtime_agrees_with_its_row(host_facts: dict[str, Any]) -> None:
    target = host_target()
    found = disagreements(target, host_facts)
    assert not found, f"{target.describe()}: " + "; ".join(map(str, found))


def test_a_wrong_row_is_caught_and_named(host_facts: dict[str, Any]) -> None:
    """The control: another architecture's row, a row with a wrong atomic width, and a
    runtime that refuses a width the row allows are all disagreements, named."""
    host = host_target()
    other = make_target("i686" if host.architecture.pointer_size == 8 else "x86_64")
    named = {found.field for found in disagreements(other, host_facts)}
    assert {"pointer size", "c_long size", "c_size_t size"} <= named, named

    narrow = dataclasses.replace(
        host, architecture=dataclasses.replace(host.architecture, atomic_width=4))
    named = {found.field for found in disagreements(narrow, host_facts)}
    assert {"atomic width", "atomic c_uint64"} <= named, named

    refusing = {**host_facts, "atomics": {**host_facts["atomics"],
                "ctypes.c_uint64": "AtomicWidthUnsupported: c_ulonglong (8 bytes)"}}
    [found] = [found for found in disagreements(host, refusing)
               if found.field == "atomic c_uint64"]
    assert (found.plugin, found.runtime) == ("allowed", refusing["atomics"]["ctypes.c_uint64"])
    assert "atomic width" in {found.field for found in disagreements(host, refusing)}


def test_a_failed_port_run_names_its_failed_tests(tmp_path: Path) -> None:
    """CI shows only the summary (the port's log stays on the CI machine): each failed or
    errored test is named under its own reason; passed and skipped tests are not listed."""
    (tmp_path / "ready.json").write_text('{"python": "3.11.2"}')
    outcomes = [{"test": "tests/test_a.py::test_one[8]", "outcome": "failed", "reason": "boom"},
                {"test": "tests/test_a.py::test_two", "outcome": "failed", "reason": "bang"},
                {"test": "tests/test_a.py::test_six", "outcome": "failed", "reason": "boom"},
                {"test": "tests/test_b.py::test_three", "outcome": "error", "reason": "import"},
                {"test": "tests/test_b.py::test_four", "outcome": "passed", "reason": ""},
                {"test": "tests/test_c.py::test_five", "outcome": "skipped", "reason": "32-bit"}]
    result = SuiteResult(Root(PORTS[0], tmp_path / "root"), 1.0, 1.0, 1, 25, outcomes, [],
                         tmp_path / "log")
    lines = result.summary().splitlines()
    failed = lines.index("  failed (2): boom")
    assert lines[failed + 1:failed + 6] == ["    tests/test_a.py::test_one[8]",
                                            "    tests/test_a.py::test_six",
                                            "  failed (1): bang",
                                            "    tests/test_a.py::test_two",
                                            "  error (1): import"]
    assert lines[failed + 6] == "    tests/test_b.py::test_three"
    assert not result.green
    assert not any("test_four" in line or "test_five" in line for line in lines)


def readme_verified_column() -> dict[str, str]:
    """target -> the README targets table's `verified on a real runtime` cell."""
    lines = README.read_text().splitlines()
    header = next(index for index, line in enumerate(lines)
                  if line.startswith("| target |") and VERIFIED_COLUMN in line)
    names = [cell.strip() for cell in lines[header].strip("|").split("|")]
    column = names.index(VERIFIED_COLUMN)
    rows: dict[str, str] = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[column]
    return rows


def test_the_readme_says_which_targets_were_verified() -> None:
    """A row names the Debian port it was verified on, or says it was not."""
    verified = readme_verified_column()
    assert set(verified) == set(ARCHITECTURES)
    by_target = {port.target: port for port in PORTS}
    for target, cell in verified.items():
        if target in by_target:
            assert re.search(rf"\b{by_target[target].debian}\b", cell), (target, cell)
        elif target != "x86_64":
            assert cell.lower().startswith("no"), (target, cell)
