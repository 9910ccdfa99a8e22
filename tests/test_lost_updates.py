"""No lost update across processes and threads, and a spin lock built on compare_exchange.

N worker processes, each with M threads, share memfd guest memory with this process
(see `concurrency_harness`). Every guarantee is checked next to its non-atomic control
run by the same code: the control must break, or the exact result would prove nothing.
Threads of one process rarely interleave badly under the GIL; the processes are what
makes the controls lose updates. On a loaded machine the processes may not run at the
same time in one run, so a control runs again, a bounded number of times, until it shows
what it must (`support.provoke`); a guarantee is checked on every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import pytest
from concurrency_harness import (
    COUNTER32,
    COUNTER64,
    DOWN_COUNTER,
    GUARDED_COUNT,
    GUARDED_WORDS,
    LOCK,
    OR_AND_MASK,
    SWAP_WORD,
    XOR_MASK,
    WorkerGroup,
    reports_of_threads,
    shared_memory,
    u32,
    u64,
)
from host_assumptions import needs_8_byte_atomics
from support import provoke, scaled

from vm_memory import GuestMemoryMmap

CONTROL_ATTEMPTS: Final = 5
CONTROL_ITERATIONS: Final = scaled(20_000, at_least=1_000)
"""Per thread, in each control: enough that the workers overlap even on a loaded 2-CPU
machine where the compiled path finishes a short run within one time slice (scaled
down under an emulator, where each iteration costs far more: `support.scaled`)."""


@dataclass(frozen=True)
class Size:
    processes: int
    threads: int
    iterations: int

    @property
    def total(self) -> int:
        return self.processes * self.threads * self.iterations

    def __str__(self) -> str:
        return f"{self.processes}x{self.threads}x{self.iterations}"


def sizes(normal: Size, long: Size) -> pytest.MarkDecorator:
    """Parametrize with the normal size (its iterations `scaled`) and the long one
    (marked `long`)."""
    normal = Size(normal.processes, normal.threads,
                  scaled(normal.iterations, at_least=min(normal.iterations, 1_000)))
    return pytest.mark.parametrize("size", [
        pytest.param(normal, id=str(normal)),
        pytest.param(long, id=str(long), marks=pytest.mark.long),
    ])


def run(role: str, size: Size, memory: GuestMemoryMmap | None = None,
        **params: Any) -> tuple[GuestMemoryMmap, list[dict[str, Any]]]:
    """Run `role` on `size.processes` workers released together; their reports."""
    memory = memory or shared_memory()
    with WorkerGroup(memory, role, size.processes, threads=size.threads,
                     iterations=size.iterations, **params) as workers:
        workers.open_gate()
        reports = workers.results()
    return memory, reports


# ---- Counters --------------------------------------------------------------------------


def counters(memory: GuestMemoryMmap) -> tuple[int, int]:
    return memory.read_atomic(u64(COUNTER64)), memory.read_atomic(u32(COUNTER32))


@needs_8_byte_atomics
@sizes(Size(4, 2, 20_000), Size(8, 4, 200_000))
def test_fetch_add_loses_no_update(size: Size) -> None:
    """N processes, M threads each, K fetch_add each on a u64 and a u32: exactly N·M·K each."""
    memory, _ = run("counter", size, mode="atomic")
    final64, final32 = counters(memory)
    print(f"fetch_add {size}: u64 {final64:,}, u32 {final32:,}, expected {size.total:,}")
    assert (final64, final32) == (size.total, size.total)


@needs_8_byte_atomics
def test_plain_increment_loses_updates() -> None:
    """The control: read_obj + write_obj in the same harness loses updates."""
    size = Size(4, 2, CONTROL_ITERATIONS)

    def attempt() -> tuple[int, int]:
        memory, _ = run("counter", size, mode="plain")
        final64, final32 = counters(memory)
        print(f"plain increment {size}: u64 {final64:,}, u32 {final32:,}, "
              f"expected {size.total:,}")
        assert 0 < final64 <= size.total and 0 < final32 <= size.total
        return final64, final32

    provoke(attempt, lambda finals: max(finals) < size.total, attempts=CONTROL_ATTEMPTS,
            what="both counters losing updates")


# ---- The other read-modify-writes ------------------------------------------------------


@dataclass(frozen=True)
class ReadModifyWriteOutcome:
    size: Size
    down_counter: int
    or_and_mask: int
    xor_mask: int
    wrong_old_values: int
    """Old values from fetch_or/and/xor that contradict the owning thread's own history."""
    swap_conserved: bool
    """Every swapped-in token (and the initial 0) came out exactly once, or is left."""


def run_read_modify_writes(size: Size, mode: str) -> ReadModifyWriteOutcome:
    assert size.processes * size.threads <= 64, "one mask bit per thread"
    memory = shared_memory()
    memory.write_atomic(u64(DOWN_COUNTER), size.total)
    memory, reports = run("read_modify_writes", size, memory, mode=mode)
    threads = list(reports_of_threads(reports))
    swapped_out = sorted(value for thread in threads for value in thread["swapped_out"])
    final_token = memory.read_atomic(u64(SWAP_WORD))
    outcome = ReadModifyWriteOutcome(
        size=size,
        down_counter=memory.read_atomic(u64(DOWN_COUNTER)),
        or_and_mask=memory.read_atomic(u64(OR_AND_MASK)),
        xor_mask=memory.read_atomic(u64(XOR_MASK)),
        wrong_old_values=sum(thread["wrong_or"] + thread["wrong_and"] + thread["wrong_xor"]
                             for thread in threads),
        swap_conserved=sorted([*swapped_out, final_token]) == list(range(size.total + 1)),
    )
    print(f"{mode} read-modify-writes: {outcome}")
    return outcome


@needs_8_byte_atomics
@sizes(Size(4, 2, 2_001), Size(8, 4, 20_001))
def test_read_modify_writes_across_processes(size: Size) -> None:
    """fetch_sub, fetch_or, fetch_and, fetch_xor and swap, contended across processes.

    Each thread owns one bit: it sets it with fetch_or (old bit must be clear), clears
    it with fetch_and (old bit must be set), toggles it with fetch_xor (old bit must
    match its parity), and sets it once more at the end. fetch_sub counts a counter
    down to exactly 0; swap passes unique tokens, none lost or duplicated.
    """
    outcome = run_read_modify_writes(size, "atomic")
    all_bits = (1 << (size.processes * size.threads)) - 1
    assert outcome.down_counter == 0
    assert outcome.or_and_mask == all_bits
    assert outcome.xor_mask == (all_bits if size.iterations % 2 else 0)
    assert outcome.wrong_old_values == 0
    assert outcome.swap_conserved


@needs_8_byte_atomics
def test_plain_read_modify_writes_break_the_same_checks() -> None:
    """The control: each operation as read_obj + write_obj fails those checks: a
    decrement lost, a bit of another thread clobbered, a swap token lost or duplicated."""
    size = Size(4, 2, CONTROL_ITERATIONS + 1)
    provoke(lambda: run_read_modify_writes(size, "plain"),
            lambda outcome: (outcome.down_counter > 0 and outcome.wrong_old_values > 0
                             and not outcome.swap_conserved),
            attempts=CONTROL_ATTEMPTS, what="all three checks failing in one run")


# ---- compare_exchange as a spin lock ---------------------------------------------------


@dataclass(frozen=True)
class GuardedOutcome:
    words: list[int]
    inconsistent: int
    """Critical sections that found the guarded words unequal."""
    contended: int
    """Failed lock attempts: the workers really competed for the lock."""
    lock_word: int


def run_guarded_update(size: Size, locked: bool) -> GuardedOutcome:
    memory, reports = run("guarded_update", size, locked=locked)
    outcome = GuardedOutcome(
        words=[memory.read_obj(u64(GUARDED_WORDS + 8 * index))
               for index in range(GUARDED_COUNT)],
        inconsistent=sum(report["inconsistent"] for report in reports),
        contended=sum(report["contended"] for report in reports),
        lock_word=memory.read_atomic(u32(LOCK)),
    )
    print(f"{'locked' if locked else 'unlocked'} multi-word update {size}: {outcome}")
    return outcome


@sizes(Size(4, 2, 5_000), Size(4, 4, 50_000))
def test_compare_exchange_spin_lock_guards_a_multi_word_update(size: Size) -> None:
    """Under the lock, 4 words updated with plain write_obj are always seen equal; runs
    again (every run checked) until one where the lock was really contended."""

    def attempt() -> GuardedOutcome:
        outcome = run_guarded_update(size, locked=True)
        assert outcome.inconsistent == 0
        assert outcome.words == [size.total] * GUARDED_COUNT
        assert outcome.lock_word == 0
        return outcome

    provoke(attempt, lambda outcome: outcome.contended > 0, attempts=CONTROL_ATTEMPTS,
            what="the lock contended (else the run proves nothing)")


def test_without_the_lock_the_multi_word_update_breaks() -> None:
    """The control: the same update without the lock is seen half-done and loses counts."""
    size = Size(4, 2, CONTROL_ITERATIONS)
    provoke(lambda: run_guarded_update(size, locked=False),
            lambda outcome: outcome.inconsistent > 0 and min(outcome.words) < size.total,
            attempts=CONTROL_ATTEMPTS, what="a half-done update seen and counts lost")
