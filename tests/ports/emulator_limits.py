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


HOST_BYTE_ORDER_VARIABLE: Final = "VM_MEMORY_PORTS_HOST_BYTE_ORDER"
"""Set by the harness to the host's `sys.byteorder` (the byte order of the host's QEMU)."""


def _emulated_other_byte_order() -> bool:
    host = os.environ.get(HOST_BYTE_ORDER_VARIABLE)
    return bool(os.environ.get(EMULATOR_VARIABLE)) and host is not None and host != sys.byteorder


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
    EmulatorLimit(
        _emulated_other_byte_order,
        ("tests/vhost/test_qemu_guest.py::"
         "test_linux_guest_on_ours_and_on_qemu_storage_daemon",
         "tests/vhost/test_qemu_guest.py::"
         "test_backend_killed_mid_io_resumes_without_losing_a_byte"),
        "vhost-user messages and eventfd counts are in the machine's native byte order "
        "(vhost-user.rst, eventfd(2)); here the front-end is the host's QEMU, the other "
        "byte order than the emulated back-end, a pairing no real machine has (the "
        "back-end reads QEMU's first message as an unknown request and hangs up: measured "
        "on s390x); the back-end's protocol, device and eventfd tests "
        "(tests/vhost/test_protocol.py) run against a front-end in the port's own order"),
)


def limits_of(nodeid: str) -> list[EmulatorLimit]:
    """The emulator limits that break the test `nodeid` on this interpreter."""
    function = nodeid.partition("[")[0]
    return [limit for limit in EMULATOR_LIMITS if function in limit.tests and limit.applies()]
