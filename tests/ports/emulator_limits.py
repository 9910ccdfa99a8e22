"""What qemu-user cannot do as the real CPU would, declared where it bites.

An emulator limit skips the tests it breaks, with the reason, under the emulator only
(never on the host, never on a native port). Library problems are never declared here:
a test that fails on a port fails the port's run. Evaluated inside the foreign
interpreter, by `foreign_plugin`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class EmulatorLimit:
    applies: Callable[[], bool]
    """Whether the limit bites the interpreter running the tests."""
    tests: tuple[str, ...]
    """Node ids of the test functions it breaks (every parameter of each)."""
    reason: str


EMULATOR_VARIABLE: Final = "VM_MEMORY_PORTS_EMULATOR"
"""Set by the harness to the emulator's name when it runs the suite under one."""


def _emulated_64_bit() -> bool:
    return bool(os.environ.get(EMULATOR_VARIABLE)) and sys.maxsize > 2**32


EMULATOR_LIMITS: Final = (
    EmulatorLimit(
        _emulated_64_bit,
        ("tests/test_mmap_backends.py::test_one_tib_sparse_guest_stays_small_in_a_subprocess",),
        "qemu-user tracks every page of a guest mapping: mapping 1 TiB takes it minutes "
        "(measured 95 s on arm64), past the test's timeout; on the real CPU it is one mmap"),
)


def limits_of(nodeid: str) -> list[EmulatorLimit]:
    """The emulator limits that break the test `nodeid` on this interpreter."""
    function = nodeid.partition("[")[0]
    return [limit for limit in EMULATOR_LIMITS if function in limit.tests and limit.applies()]
