"""pytest plugin for the runtime suite inside a foreign interpreter
(`-p tests.ports.foreign_plugin`; it runs there, never on the host's pytest).

The harness names the hypothesis profile `ports` (the suite's conftest registers it, so
that the suite's child interpreters that import the conftest know it too: the same
properties with VM_MEMORY_PORTS_EXAMPLES examples, no example database). At the end it
writes every test's outcome, a skip's reason with it, as JSON to the file named by
VM_MEMORY_PORTS_REPORT; meanwhile each outcome is also appended to `<report>.partial` as
it comes (one JSON line), so a run the harness's watchdog kills still leaves the outcome
of every test that finished. The emulator limits declared in `emulator_limits` skip the
tests they break, with the reason.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import settings

from .emulator_limits import limits_of

REPORT_VARIABLE: Final = "VM_MEMORY_PORTS_REPORT"
EXAMPLES_VARIABLE: Final = "VM_MEMORY_PORTS_EXAMPLES"
PROFILE: Final = "ports"
PARTIAL_SUFFIX: Final = ".partial"

_outcomes: list[dict[str, Any]] = []
_deselected: list[str] = []


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """A skip's or an expected failure's reason, or the first error line of a failure."""
    if isinstance(report, pytest.TestReport) and hasattr(report, "wasxfail"):
        return str(report.wasxfail).removeprefix("reason: ")
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):
        return str(longrepr[2]).removeprefix("Skipped: ")
    lines = str(longrepr or "").strip().splitlines()
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    return (errors or lines or [""])[0]


def pytest_configure(config: pytest.Config) -> None:
    """The suite's conftest puts the interpreter's directory first on PATH (for the venv's
    tools); here that is the root's /usr/bin, whose programs are the foreign
    architecture's and cannot be started from the host (unshare, say): take it off."""
    del config
    ours = os.path.dirname(sys.executable)
    os.environ["PATH"] = os.pathsep.join(
        entry for entry in os.environ.get("PATH", "").split(os.pathsep) if entry != ours)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for limit in limits_of(item.nodeid):
            item.add_marker(pytest.mark.skip(reason=limit.reason))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or report.outcome != "passed":
        if report.when != "call" and report.outcome == "failed":
            outcome = "error"
        elif hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        else:
            outcome = report.outcome
        _record({"test": report.nodeid, "outcome": outcome, "when": report.when,
                 "reason": "" if outcome == "passed" else _reason(report),
                 "seconds": round(report.duration, 3)})


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _record({"test": report.nodeid, "outcome": "error", "when": "collect",
                 "reason": _reason(report), "seconds": 0.0})


def _record(outcome: dict[str, Any]) -> None:
    """Keep an outcome for the report, and append it to the partial report now."""
    _outcomes.append(outcome)
    destination = os.environ.get(REPORT_VARIABLE)
    if destination:
        with open(destination + PARTIAL_SUFFIX, "a") as partial:
            partial.write(json.dumps(outcome) + "\n")


def pytest_deselected(items: list[pytest.Item]) -> None:
    _deselected.extend(item.nodeid for item in items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    destination = os.environ.get(REPORT_VARIABLE)
    if destination:
        Path(destination).write_text(json.dumps({
            "exit_status": int(exitstatus), "collected": session.testscollected,
            "deselected": _deselected, "max_examples": settings().max_examples,
            "outcomes": _outcomes}))
