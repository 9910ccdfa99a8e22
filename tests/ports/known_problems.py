"""Library problems the ports found, and the emulator's own limits, declared where they
bite.

A library problem is a real failure of `vm_memory` on a foreign architecture (not of a
test), kept visible: under the ports harness the tests it breaks are strict expected
failures (`xfail(strict=True)`) named in the per-architecture summary, so the day the
library is fixed they pass, the run fails as XPASS, and the entry must go. Elsewhere (a
real big-endian machine, say) those tests simply fail. An emulator limit is what
qemu-user cannot do as the real CPU would: those tests are skipped with the reason, and
only under the emulator. Evaluated inside the foreign interpreter.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class KnownProblem:
    applies: Callable[[], bool]
    """Whether the problem exists on the interpreter running the tests."""
    tests: tuple[str, ...]
    """Node ids of the test functions it breaks (every parameter of each)."""
    reason: str
    emulator_limit: bool = False
    """Not the library's: qemu-user's (the tests are skipped, under emulation only)."""


def _big_endian() -> bool:
    return sys.byteorder == "big"


def _no_eight_byte_atomics() -> bool:
    from host_assumptions import EIGHT_BYTE_REFUSAL  # the tests' directory is on sys.path
    return EIGHT_BYTE_REFUSAL is not None


def _mips_or_power() -> bool:
    return platform.machine().startswith(("mips", "ppc"))


def _emulated_64_bit() -> bool:
    return bool(os.environ.get(EMULATOR_VARIABLE)) and sys.maxsize > 2**32


EMULATOR_VARIABLE: Final = "VM_MEMORY_PORTS_EMULATOR"
"""Set by the harness to the emulator's name when it runs the suite under one."""
ONE_TIB: Final = "tests/test_backends.py::test_one_tib_sparse_guest_stays_small_in_a_subprocess"


DIRTY_TRACKING: Final = "tests/test_dirty_tracking.py::"

KNOWN_PROBLEMS: Final = (
    KnownProblem(
        _big_endian,
        (f"{DIRTY_TRACKING}test_write_path_marks_exactly_its_pages",
         f"{DIRTY_TRACKING}test_page_size_is_configurable",
         f"{DIRTY_TRACKING}test_bitmap_counts_a_partial_last_page",
         "tests/test_examples.py::test_dirty_tracking_loop_converges_and_copies_exactly"),
        "library problem on big-endian hosts: DirtyBitmap.take_dirty_pages reads the byte "
        "of page i in an exchanged 8-page word as bits 8*i..8*i+7 (little-endian), so it "
        "reports page 7 - i of the word for page i"),
    KnownProblem(
        _no_eight_byte_atomics,
        (*(f"{DIRTY_TRACKING}{name}" for name in (
            "test_write_path_marks_exactly_its_pages", "test_read_path_marks_nothing",
            "test_failed_compare_exchange_and_refused_writes_mark_nothing",
            "test_page_size_is_configurable", "test_bitmap_counts_a_partial_last_page",
            "test_take_and_clear_beside_writers_loses_no_page",
            "test_harness_catches_a_naive_snapshot_then_clear",
            "test_harness_catches_writes_that_skip_marking")),
         "tests/test_examples.py::test_dirty_tracking_loop_converges_and_copies_exactly"),
        "library problem on hosts without 8-byte atomics (mips o32): DirtyBitmap takes "
        "8-page words with an 8-byte atomic exchange, so take_dirty_pages raises "
        "AtomicWidthUnsupported and dirty tracking cannot be used at all"),
    KnownProblem(
        lambda: platform.machine().startswith("mips"),
        ("tests/test_backends.py::test_huge_pages_map_where_reserved_and_fail_clearly_where_not",),
        "library problem on MIPS: mmap_region.py falls back to x86's MAP_HUGETLB (0x40000), "
        "which is MAP_STACK on MIPS (its own is 0x80000): huge_pages=True maps ordinary "
        "pages without a word"),
    KnownProblem(
        _mips_or_power,
        (ONE_TIB,),
        "library problem on MIPS and POWER: mmap_region.py falls back to x86's "
        "MAP_NORESERVE (0x4000), which is MAP_EXECUTABLE on MIPS (its own is 0x400) and "
        "nothing on POWER (0x40): no_reserve=True reserves the whole size, and a 1 TiB "
        "guest fails with ENOMEM"),
    KnownProblem(
        lambda: _emulated_64_bit() and not _mips_or_power(),
        (ONE_TIB,),
        "qemu-user tracks every page of a guest mapping: mapping 1 TiB takes it minutes "
        "(measured 95 s on arm64), past the test's timeout; on the real CPU it is one mmap",
        emulator_limit=True),
)


def problems_of(nodeid: str) -> list[KnownProblem]:
    """The known problems that break the test `nodeid` on this interpreter."""
    function = nodeid.partition("[")[0]
    return [problem for problem in KNOWN_PROBLEMS
            if function in problem.tests and problem.applies()]
