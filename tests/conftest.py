"""Hypothesis profiles: `default` for the normal suite, `long` for tests marked `long`.

Tests marked `long` apply the `long` profile themselves (`settings.get_profile("long")`),
so `pytest -m long` runs 10,000 examples per property without any environment setup.
No deadline: the machine is shared and noisy, and timing is the benchmarks' business.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
