"""Hypothesis profiles: `default` for the normal suite, `long` for tests marked `long`.

Tests marked `long` apply the `long` profile themselves (`settings.get_profile("long")`),
so `pytest -m long` runs 10,000 examples per property without any environment setup.
No deadline: the machine is shared and noisy, and timing is the benchmarks' business.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from vm_memory import PURE_ENVIRONMENT_VARIABLE, access_path
from vm_memory.implementation import compiled

settings.register_profile(
    "default", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


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
