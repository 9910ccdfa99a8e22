"""Fixtures of the port tests: roots and test packages, or a skip saying why not (a
failure where CI=true: CI must run them), and the per-architecture results at the end of
the run (carried from xdist workers as user properties)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support import unavailable

from .architectures import Port
from .roots import PortUnavailable, Root, ensure_root, ensure_test_packages

SUMMARY_PROPERTY = "ports_summary"
_summaries: dict[str, str] = {}


def root_of(port: Port) -> Root:
    try:
        return ensure_root(port)
    except PortUnavailable as error:
        unavailable(str(error))


@pytest.fixture(scope="session")
def test_packages() -> Path:
    try:
        return ensure_test_packages()
    except PortUnavailable as error:
        unavailable(str(error))


@pytest.fixture
def report_summary(record_property: Callable[[str, object], None]) -> Callable[[str], None]:
    """Hands a port's summary to the end-of-run report."""
    return lambda summary: record_property(SUMMARY_PROPERTY, summary)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, value in report.user_properties:
        if name == SUMMARY_PROPERTY:
            _summaries[report.nodeid] = str(value)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _summaries:
        terminalreporter.section("Debian ports")
        for nodeid in sorted(_summaries):
            terminalreporter.write_line(_summaries[nodeid])
