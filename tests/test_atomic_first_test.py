"""The pure atomic fast paths' first test admits nothing the general path refuses.

Each pure atomic method first tries one test for the commonest call (the last region
hit, a store only where the region tracks no dirty pages, exact ints inside one-digit
bounds that sit within the type's range, SEQ_CST) before its full fast path. These tests
run on the pure path (a child with `VM_MEMORY_PURE=1`, whichever path this session
runs), cold and warm, against `GuestMemory._atomic`, the general path; each has a
control that breaks the rule it guards and shows the comparison then fails.
"""

from __future__ import annotations

import json
from typing import Any, Final

from host_assumptions import EIGHT_BYTE_REFUSAL, WIDE_ATOMIC
from support import run_python_code

BOUNDS_PROGRAM: Final = """
import ctypes, json, sys
from vm_memory import AlignedGuestAddress, AtomicWidthUnsupported, GuestAddress
from vm_memory import GuestMemoryMmap, access_path, guest_memory
from vm_memory.aligned_address import set_fast_atomics
from vm_memory.atomic_operations import OPERATIONS

assert access_path().name == "pure"
BREAK = sys.argv[1] == "break"
memory = GuestMemoryMmap.from_ranges([(GuestAddress(0x10000), 0x1000)])
ONE_DIGIT = (1 << 30) - 1
ALL_TYPES = [ctypes.c_uint8, ctypes.c_int8, ctypes.c_uint16, ctypes.c_int16,
             ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint64, ctypes.c_int64]

def host_does(ctype):  # mips o32 and riscv32 refuse 8 bytes (tests/host_assumptions.py)
    try:
        memory.read_atomic(AlignedGuestAddress.new(ctype, GuestAddress(0x10040)))
        return True
    except AtomicWidthUnsupported:
        return False

TYPES = [ctype for ctype in ALL_TYPES if host_does(ctype)]
CALLS = ["write_atomic", "swap", "fetch_add", "fetch_or", "expected", "desired"]

def values(ctype):
    bits = 8 * ctypes.sizeof(ctype)
    signed = ctype(-1).value < 0
    low, high = (-(1 << bits - 1), (1 << bits - 1) - 1) if signed else (0, (1 << bits) - 1)
    near = {low - 1, low, high, high + 1, -ONE_DIGIT - 1, -ONE_DIGIT, ONE_DIGIT,
            ONE_DIGIT + 1, -1, 0, 1}
    return sorted(near)

def run(call, address, value):
    try:
        if call == "expected":
            result = memory.compare_exchange(address, value, 0)
        elif call == "desired":
            result = memory.compare_exchange(address, 0, value)
        else:
            result = getattr(memory, call)(address, value)
        return ["ok", repr(result)]
    except Exception as error:
        return ["error", type(error).__name__]

def general(call, address, value):
    operation = OPERATIONS["compare_exchange" if call in ("expected", "desired") else call]
    operands = {"expected": (value, 0), "desired": (0, value)}.get(call, (value,))
    try:
        return ["ok", repr(memory._atomic(operation, address, guest_memory._SEQ_CST,
                                          operands))]
    except Exception as error:
        return ["error", type(error).__name__]

mismatches = []
checked = 0
for ctype in TYPES:
    address = AlignedGuestAddress.new(ctype, GuestAddress(0x10040))
    for value in values(ctype):
        for call in CALLS:
            for state in ("cold", "warm"):
                guest_memory.forget_fast_atomics()
                if state == "warm":
                    memory.write_atomic(address, 0)
                    memory.write_atomic(address, 0)  # primed, and the last region hit
                    if BREAK:  # a first test bounded by the type's width only
                        info = address._info
                        widened = tuple(
                            entry if not isinstance(entry, tuple)
                            else (entry[0], entry[1], -(1 << 70), 1 << 70)
                            if len(entry) == 4 else (entry[0], -(1 << 70), 1 << 70)
                            for entry in info.atomics)
                        set_fast_atomics(info, widened)
                ours = run(call, address, value)
                after = memory.read_bytes(GuestAddress(0x10040), 8).hex()
                memory.write_slice(GuestAddress(0x10040), bytes(8))
                guest_memory.forget_fast_atomics()
                reference = general(call, address, value)
                expected_after = memory.read_bytes(GuestAddress(0x10040), 8).hex()
                memory.write_slice(GuestAddress(0x10040), bytes(8))
                checked += 1
                if ours != reference or after != expected_after:
                    mismatches.append([ctype.__name__, call, value, state, ours, reference,
                                       after, expected_after])
print(json.dumps({"checked": checked, "mismatches": mismatches,
                  "refused": [ctypes.sizeof(ctype) for ctype in ALL_TYPES if ctype not in TYPES]}))
"""


def bounds(mode: str) -> dict[str, Any]:
    result = run_python_code(BOUNDS_PROGRAM.replace("sys.argv[1]", repr(mode)),
                             environment={"VM_MEMORY_PURE": "1"})
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def test_the_first_tests_value_bounds_admit_only_what_the_general_path_admits() -> None:
    """Every integer type, values at and past the type's range and the one-digit bounds,
    every value-taking shape (a store, a swap, two read-modify-writes, compare-exchange's
    expected and desired), cold and warm: the same result or refusal, the same bytes."""
    answer = bounds("keep")
    # 8-byte types only where the host refuses them, as the library says it does
    assert answer["refused"] == ([] if EIGHT_BYTE_REFUSAL is None else [8, 8]), answer
    types = 8 - len(answer["refused"])
    assert answer["checked"] >= types * 9 * 6 * 2, answer["checked"]  # 9+ values a type
    assert answer["mismatches"] == [], answer["mismatches"][:5]


def test_control_first_test_bounded_by_width_only_is_caught() -> None:
    """The control: entries whose first-test bounds are wider than the type (what a
    first test without the type's range would admit) let out-of-range values through
    warm, which the comparison above reports."""
    answer = bounds("break")
    assert answer["mismatches"], "the comparison cannot see a too-wide first test"
    assert all(state == "warm" for _, _, _, state, *_ in answer["mismatches"])


DIRTY_PROGRAM: Final = """
import ctypes, json
from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap, access_path
from vm_memory import guest_memory

assert access_path().name == "pure"
STALE = {stale}
memory = GuestMemoryMmap.from_ranges([(GuestAddress(0x10000), 0x4000)])
region = memory.regions()[0]
address = AlignedGuestAddress.new(ctypes.{wide}, GuestAddress(0x12008))
stores = {{"write_atomic": lambda: memory.write_atomic(address, 1),
          "swap": lambda: memory.swap(address, 2),
          "fetch_add": lambda: memory.fetch_add(address, 1),
          "fetch_xor": lambda: memory.fetch_xor(address, 1),
          "compare_exchange": lambda: memory.compare_exchange(
              address, memory.read_atomic(address), 7)}}
marked = {{}}
for name, store in stores.items():
    guest_memory.forget_fast_atomics()
    region.stop_tracking_dirty_pages()
    store(); store()  # warm: primed, the last region hit, no tracking yet
    dirty = region.track_dirty_pages()
    if STALE:  # a limit not derived again when tracking starts
        object.__setattr__(region, "atomic_untracked_limit", region.atomic_write_limit)
    store()
    marked[name] = dirty.take_dirty_pages()
region.stop_tracking_dirty_pages()
memory.write_atomic(address, 3)
marked["after stopping"] = region.dirty is None and memory.read_atomic(address) == 3
print(json.dumps(marked))
"""


def dirty_marks(stale: bool) -> dict[str, Any]:
    result = run_python_code(DIRTY_PROGRAM.format(stale=stale, wide=WIDE_ATOMIC.__name__),
                             environment={"VM_MEMORY_PURE": "1"})
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def test_a_warm_atomic_store_marks_the_page_once_the_region_tracks_dirty_pages() -> None:
    """The first test admits stores only under `atomic_untracked_limit`, which tracking
    derives again: a warm store after `track_dirty_pages` marks its page, every shape."""
    answer = dirty_marks(stale=False)
    assert answer == {"write_atomic": [2], "swap": [2], "fetch_add": [2], "fetch_xor": [2],
                      "compare_exchange": [2], "after stopping": True}, answer


def test_control_a_stale_untracked_limit_loses_the_marks() -> None:
    """The control: with the limit left as it was before tracking, the warm stores mark
    nothing, and the test above would see it."""
    answer = dirty_marks(stale=True)
    assert all(answer[name] == [] for name in
               ("write_atomic", "swap", "fetch_add", "fetch_xor", "compare_exchange")), answer
