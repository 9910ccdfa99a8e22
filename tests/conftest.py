"""Suite-wide set-up: hypothesis profiles, and a check that every test id is stable.

Hypothesis: the `default` profile for the normal suite, `long` for tests marked `long`.
Tests marked `long` apply the `long` profile themselves (`settings.get_profile("long")`),
so `pytest -m long` runs 10,000 examples per property without any environment setup.
No deadline: the machine is shared and noisy, and timing is the benchmarks' business.

Shared helpers live in `support.py` beside this file (``from support import ...``:
pytest puts this directory on ``sys.path`` for its conftest).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from support import unstable_ids

from vm_memory import PURE_ENVIRONMENT_VARIABLE, access_path
from vm_memory.implementation import compiled

settings.register_profile(
    "default", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# tests/ports: the same properties with fewer examples under an emulator (the harness
# names how many), and no example database shared between architectures.
settings.register_profile(
    "ports", max_examples=int(os.environ.get("VM_MEMORY_PORTS_EXAMPLES", "25")), deadline=None,
    database=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The README runs the suite as `.venv/bin/python -m pytest` without activating the venv:
# the tools installed beside that interpreter (mypy, pyright, stubtest) must still be the
# ones found on PATH, by our tests and by pytest-mypy-plugins (which looks mypy up there).
os.environ["PATH"] = os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", "")])

STARTED_FIRST = ("test_static_checks.py", "test_stubtest.py")
"""The longest single tests (whole-tree checker runs): started first, so that under
``pytest -n`` they overlap the rest of the suite instead of ending it alone."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse test ids that hold a memory address (a default ``repr``): each ``pytest -n``
    worker would collect different ids, and xdist refuses to run (use `support.stable_id`).
    Then move the `STARTED_FIRST` files to the front (a stable, deterministic order)."""
    unstable = unstable_ids(item.nodeid for item in items)
    if unstable:
        raise pytest.UsageError("test ids differ from process to process (a memory address "
                                "in a repr; use support.stable_id): " + ", ".join(unstable))
    items.sort(key=lambda item: item.path.name not in STARTED_FIRST)


@pytest.fixture
def compiled_path() -> object:
    """The compiled access path's extension module, for tests of that path alone.

    Skipped (with the reason) when the pure path is forced — the pure run of the suite
    has nothing compiled to test; without the extension built it is a skip off CI and a
    failure on CI (the CI machine has a compiler, so the extension must be there).
    """
    path = access_path()
    if path.name == "compiled":
        return compiled
    if os.environ.get(PURE_ENVIRONMENT_VARIABLE, "") not in ("", "0"):
        pytest.skip(f"the pure path is forced ({path.reason}); these run in the compiled run")
    if os.environ.get("CI") == "true":
        pytest.fail(f"the compiled path must be built on CI: {path.reason}")
    pytest.skip(f"the compiled path is not built here: {path.reason}")
