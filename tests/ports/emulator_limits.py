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
        "qemu-user keeps its own table of every page the emulated program maps: a 1 TiB "
        "mapping took it 197 s and 6.1 GiB of resident memory on arm64 (measured; "
        "/proc/self/status is the emulator's), which the test's 100 MiB bound refuses; on "
        "the real CPU it is one mmap that touches nothing"),
    EmulatorLimit(
        lambda: bool(os.environ.get(EMULATOR_VARIABLE)),
        ("tests/tools/test_inspector_robustness.py::test_the_address_space_limit_bites",
         "tests/tools/test_inspector_robustness.py::"
         "test_huge_lengths_cost_nothing_before_the_refusal"),
        "qemu-user does not apply RLIMIT_AS to the emulated program (its own allocations "
        "would hit it): a 4 GiB bytearray under a 1 GiB limit succeeds (measured on "
        "s390x), so the control fails and the limit these tests run under is not there"),
)


def limits_of(nodeid: str) -> list[EmulatorLimit]:
    """The emulator limits that break the test `nodeid` on this interpreter."""
    function = nodeid.partition("[")[0]
    return [limit for limit in EMULATOR_LIMITS if function in limit.tests and limit.applies()]
