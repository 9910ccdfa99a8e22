"""The atomic contract against a real KVM guest vCPU.

Guest memory is a `GuestMemoryMmap` (memfd); KVM maps it from the region's host address.
The guest runs `lock inc` / `lock xadd` on a counter while host threads call
`GuestMemory.fetch_add` on the same address: no update may be lost. The control runs
the guest's plain `inc` in the same harness and must lose updates, showing the check
can fail. Skipped with the reason where /dev/kvm is not usable.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass
from typing import Final

import pytest
from host_assumptions import needs_x86_kvm_host
from support import provoke_overlapping, require

from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap, Ordering
from vm_memory_tools import guest_programs
from vm_memory_tools.kvm import KvmVm, kvm_unavailable_reason

MEMORY_SIZE: Final = 0x2_0000
CODE_ADDRESS: Final = 0x1000
COUNTER_ADDRESS: Final = 0x8000
GUEST_INCREMENTS: Final = 200_000
HOST_THREADS: Final = 2
CONTROL_ATTEMPTS: Final = 10
"""Unlocked races run until one loses an update, at most this many with the racers at once
(see `support.provoke_overlapping`)."""
GUEST_TIMEOUT_SECONDS: Final = 600.0
"""A hang guard: a loaded machine may run the emulated guest 20 times slower."""

pytestmark = needs_x86_kvm_host


@pytest.fixture(autouse=True)
def require_kvm() -> None:
    require(kvm_unavailable_reason())


@dataclass(frozen=True)
class Race:
    final: int
    guest_count: int
    host_count: int

    @property
    def expected(self) -> int:
        return self.guest_count + self.host_count


def race(program: bytes, guest_count: int) -> Race:
    """Run `program` on a vCPU while host threads fetch_add the counter through GuestMemory."""
    memory = GuestMemoryMmap.from_ranges_memfd([(GuestAddress(0), MEMORY_SIZE)])
    counter = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(COUNTER_ADDRESS))
    memory.write_slice(GuestAddress(CODE_ADDRESS), program)
    stop = threading.Event()
    started = threading.Barrier(HOST_THREADS + 1)
    counts = [0] * HOST_THREADS

    def hammer(index: int) -> None:
        started.wait()
        done = 0
        while not stop.is_set():
            for _ in range(128):
                memory.fetch_add(counter, 1, Ordering.SEQ_CST)
            done += 128
        counts[index] = done

    with KvmVm() as vm:
        vm.add_memory(0, 0, MEMORY_SIZE, memory.get_host_address(GuestAddress(0)))
        vcpu = vm.create_vcpu()
        vcpu.set_real_mode(CODE_ADDRESS)
        threads = [threading.Thread(target=hammer, args=(index,))
                   for index in range(HOST_THREADS)]
        for thread in threads:
            thread.start()
        started.wait()
        began = time.perf_counter()
        try:
            vcpu.run_until_halt(max_exits=1, timeout=GUEST_TIMEOUT_SECONDS)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        seconds = time.perf_counter() - began
    result = Race(memory.read_atomic(counter), guest_count, sum(counts))
    print(f"guest {guest_count} in {seconds:.2f} s beside host {result.host_count}: "
          f"final {result.final}, lost {result.expected - result.final}")
    return result


@pytest.mark.parametrize("instruction", ["lock inc", "lock xadd"])
def test_guest_locked_instructions_and_host_fetch_add_lose_nothing(instruction: str) -> None:
    if instruction == "lock inc":
        program = guest_programs.increment_loop(COUNTER_ADDRESS, GUEST_INCREMENTS, locked=True)
    else:
        program = guest_programs.xadd_loop(COUNTER_ADDRESS, GUEST_INCREMENTS, locked=True)
    result = race(program, GUEST_INCREMENTS)
    assert result.host_count > 10_000, "the host must really have raced the guest"
    assert result.final == result.expected


def test_guest_plain_inc_loses_updates_in_the_same_harness() -> None:
    """The control: an unlocked guest increment loses updates against the same host."""

    def attempt() -> Race:
        program = guest_programs.increment_loop(COUNTER_ADDRESS, GUEST_INCREMENTS,
                                                locked=False)
        result = race(program, GUEST_INCREMENTS)
        assert result.final <= result.expected  # nothing may be counted twice
        return result

    provoke_overlapping(attempt, lambda result: result.final < result.expected,
                        attempts=CONTROL_ATTEMPTS, what="a lost update")
