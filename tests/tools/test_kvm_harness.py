"""Tests of the KVM harness (`vm_memory_tools.kvm`) and the guest programs, on real /dev/kvm.

Guest memory is a plain anonymous mmap; the harness gets its raw host address. The
contention tests are the point: a guest vCPU running ``lock``-prefixed instructions
and a host thread calling libatomic on the same bytes must never lose an update,
while the same guest with plain ``inc`` must lose some (so the test can fail).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import pickle
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import pytest
from host_assumptions import needs_x86_kvm_host
from support import provoke_overlapping, python_environment, require, unavailable

from vm_memory_tools import guest_programs
from vm_memory_tools.kvm import (
    ExitReason,
    IoDirection,
    KvmError,
    KvmTimeoutError,
    KvmVcpu,
    KvmVm,
    VcpuExit,
    install_kick_handler,
    kvm_unavailable_reason,
)

GUEST_MEMORY_SIZE: Final = 0x2_0000  # 128 KiB at guest-physical 0
CODE_ADDRESS: Final = 0x1000
COUNTER_ADDRESS: Final = 0x8000  # page-aligned, far from the code
UNBACKED_ADDRESS: Final = 0x8_0000  # no memory slot covers it
READ_ONLY_ADDRESS: Final = 0x4_0000  # a separate read-only slot in some tests
TEST_PORT: Final = 0x3F8

# On this kind of host KVM may emulate real-mode guests instruction by instruction
# (about 2.5 us per loop iteration, measured); on hardware virtualisation the same
# loops are hundreds of times faster. The counts keep each run near a second either way.
GUEST_INCREMENTS: Final = 200_000
GUEST_INCREMENTS_64: Final = 200_000
# The 64-bit locked increment is a cmpxchg8b retry loop: against a host adding ~1.5 M
# times a second, most emulated attempts fail and retry (measured 0.2-0.6 ms per
# success), so this count stays small.
GUEST_CMPXCHG8B_INCREMENTS: Final = 5_000
SMALL_COUNT: Final = 1000
GUEST_TIMEOUT_SECONDS: Final = 600.0
"""A hang guard, not a timing: on a loaded machine the emulated guest may run 20 times
slower than alone (seen under `pytest -n auto` beside other work)."""
SPIN_TIMEOUT_SECONDS: Final = 0.3
CRASH_TIMEOUT_SECONDS: Final = 10.0
"""How long a guest that went off into nowhere may run before it is a timeout."""
# A lost update needs the host thread on the other core inside the guest's
# read-modify-write window; on a loaded 2-core machine the scheduler may keep them
# apart for a whole run, so the non-atomic controls retry until that many runs had both
# on a core at once (`support.provoke_overlapping`) before they must have lost one.
CONTROL_ATTEMPTS: Final = 10
HOST_BATCH: Final = 256  # libatomic calls between looks at the stop flag
SEQ_CST: Final = 5
SUBPROCESS_TIMEOUT_SECONDS: Final = 300.0

pytestmark = needs_x86_kvm_host


@pytest.fixture(autouse=True)
def require_kvm() -> None:
    require(kvm_unavailable_reason())


@dataclass
class Guest:
    """A VM with one vCPU and ``GUEST_MEMORY_SIZE`` bytes of anonymous host memory."""

    memory: mmap.mmap
    host_address: int
    vm: KvmVm
    vcpu: KvmVcpu

    def load(self, program: bytes, entry: int = CODE_ADDRESS) -> None:
        self.memory[entry : entry + len(program)] = program
        self.vcpu.set_real_mode(entry)

    def read(self, address: int, width: int) -> int:
        return int.from_bytes(self.memory[address : address + width], "little")


@pytest.fixture
def guest() -> Iterator[Guest]:
    memory = mmap.mmap(-1, GUEST_MEMORY_SIZE)
    pin = ctypes.c_char.from_buffer(memory)  # keeps the mapping alive under the VM
    vm = KvmVm()
    try:
        vm.add_memory(0, 0, GUEST_MEMORY_SIZE, ctypes.addressof(pin))
        yield Guest(memory, ctypes.addressof(pin), vm, vm.create_vcpu())
    finally:
        vm.close()
        del pin
        memory.close()


# -- basic behaviour -------------------------------------------------------------


def test_unavailable_reason_is_none_here() -> None:
    assert kvm_unavailable_reason() is None


def test_guest_stores_a_value_then_halts(guest: Guest) -> None:
    guest.load(guest_programs.store_and_halt(COUNTER_ADDRESS, 0xDEADBEEF))
    assert guest.vcpu.run_until_halt(max_exits=1) == 1
    assert guest.read(COUNTER_ADDRESS, 4) == 0xDEADBEEF
    program_end = CODE_ADDRESS + len(guest_programs.store_and_halt(COUNTER_ADDRESS, 0))
    assert guest.vcpu.get_regs().rip == program_end  # stopped just after the hlt


@pytest.mark.parametrize("width", [1, 2, 4])
def test_out_exit_reaches_the_handler_with_its_data(guest: Guest, width: int) -> None:
    value = 0x1234_5678 & ((1 << (8 * width)) - 1)
    seen: list[VcpuExit] = []

    def handle(exit_: VcpuExit) -> bytes | None:
        seen.append(exit_)
        return None

    guest.load(guest_programs.port_out_and_halt(TEST_PORT, value, width=width))
    assert guest.vcpu.run_until_halt(max_exits=2, handle_exit=handle) == 2
    assert len(seen) == 1
    io = seen[0].io
    assert seen[0].reason == ExitReason.IO and io is not None
    assert (io.direction, io.port, io.size, io.count) == (IoDirection.OUT, TEST_PORT, width, 1)
    assert io.data == value.to_bytes(width, "little")


def test_in_exit_takes_the_handlers_bytes(guest: Guest) -> None:
    def answer(exit_: VcpuExit) -> bytes | None:
        assert exit_.io is not None and exit_.io.direction is IoDirection.IN
        return b"\x11\x22\x33\x44"

    guest.load(guest_programs.port_in_store_and_halt(TEST_PORT, COUNTER_ADDRESS, width=4))
    guest.vcpu.run_until_halt(max_exits=2, handle_exit=answer)
    assert guest.read(COUNTER_ADDRESS, 4) == 0x4433_2211


def test_in_exit_without_data_is_an_error(guest: Guest) -> None:
    guest.load(guest_programs.port_in_store_and_halt(TEST_PORT, COUNTER_ADDRESS))
    with pytest.raises(KvmError, match="no data"):
        guest.vcpu.run_until_halt(max_exits=2, handle_exit=lambda exit_: None)


def test_io_exit_without_a_handler_is_an_error(guest: Guest) -> None:
    guest.load(guest_programs.port_out_and_halt(TEST_PORT, 7))
    with pytest.raises(KvmError) as caught:
        guest.vcpu.run_until_halt(max_exits=2)
    assert caught.value.exit is not None and caught.value.exit.reason == ExitReason.IO


def test_write_to_read_only_slot_is_an_mmio_exit(guest: Guest) -> None:
    read_only = mmap.mmap(-1, mmap.PAGESIZE)
    pin = ctypes.c_char.from_buffer(read_only)
    try:
        guest.vm.add_memory(1, READ_ONLY_ADDRESS, mmap.PAGESIZE, ctypes.addressof(pin),
                            read_only=True)  # fmt: skip
        writes: list[VcpuExit] = []

        def record(exit_: VcpuExit) -> bytes | None:
            writes.append(exit_)
            return None

        guest.load(guest_programs.store_and_halt(READ_ONLY_ADDRESS + 8, 0xCAFE_F00D))
        guest.vcpu.run_until_halt(max_exits=2, handle_exit=record)
        mmio = writes[0].mmio
        assert mmio is not None and mmio.is_write
        assert (mmio.address, mmio.length) == (READ_ONLY_ADDRESS + 8, 4)
        assert mmio.data == (0xCAFE_F00D).to_bytes(4, "little")
        assert read_only[:] == bytes(mmap.PAGESIZE)  # the host memory did not change
        guest.vm.remove_memory(1)
    finally:
        del pin
        read_only.close()


def test_add_memory_rejects_unaligned_numbers(guest: Guest) -> None:
    with pytest.raises(ValueError, match="multiple of"):
        guest.vm.add_memory(2, 0x10_0001, mmap.PAGESIZE, guest.host_address)


# -- the guest programs alone ----------------------------------------------------


@pytest.mark.parametrize(("width", "count"), [(1, 200), (2, SMALL_COUNT), (4, GUEST_INCREMENTS)])
def test_locked_increment_loop_alone_counts_exactly(guest: Guest, width: int, count: int) -> None:
    guest.load(guest_programs.increment_loop(COUNTER_ADDRESS, count, locked=True, width=width))
    guest.vcpu.run_until_halt(max_exits=1, timeout=GUEST_TIMEOUT_SECONDS)
    assert guest.read(COUNTER_ADDRESS, width) == count


def test_64_bit_increment_loop_carries_into_the_high_half(guest: Guest) -> None:
    start = 0xFFFF_FFFF - 10
    guest.memory[COUNTER_ADDRESS : COUNTER_ADDRESS + 8] = start.to_bytes(8, "little")
    guest.load(guest_programs.increment_loop(COUNTER_ADDRESS, SMALL_COUNT, locked=True, width=8))
    guest.vcpu.run_until_halt(max_exits=1, timeout=GUEST_TIMEOUT_SECONDS)
    assert guest.read(COUNTER_ADDRESS, 8) == start + SMALL_COUNT


@pytest.mark.parametrize("width", [1, 2, 4])
def test_xadd_loop_adds_count_times_addend(guest: Guest, width: int) -> None:
    guest.load(guest_programs.xadd_loop(COUNTER_ADDRESS, SMALL_COUNT, addend=3, width=width))
    guest.vcpu.run_until_halt(max_exits=1, timeout=GUEST_TIMEOUT_SECONDS)
    assert guest.read(COUNTER_ADDRESS, width) == (3 * SMALL_COUNT) % (1 << (8 * width))


def test_zero_count_runs_no_iteration_and_notifies(guest: Guest) -> None:
    notified: list[bytes] = []

    def on_out(exit_: VcpuExit) -> bytes | None:
        assert exit_.io is not None
        notified.append(exit_.io.data)
        return None

    guest.load(guest_programs.increment_loop(COUNTER_ADDRESS, 0, locked=True, notify_port=0x99))
    guest.vcpu.run_until_halt(max_exits=2, handle_exit=on_out)
    assert guest.read(COUNTER_ADDRESS, 4) == 0
    assert notified == [bytes([guest_programs.NOTIFY_VALUE])]


@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_alternating_store_loop_ends_on_the_second_value(guest: Guest, width: int) -> None:
    values = (0x0102_0304_0506_0708 >> (64 - 8 * width), (1 << (8 * width)) - 1)
    guest.load(guest_programs.alternating_store_loop(COUNTER_ADDRESS, 50, values, width=width))
    guest.vcpu.run_until_halt(max_exits=1, timeout=GUEST_TIMEOUT_SECONDS)
    assert guest.read(COUNTER_ADDRESS, width) == values[1]


def test_code_above_64_kib_runs_with_a_nonzero_code_segment(guest: Guest) -> None:
    guest.load(guest_programs.store_and_halt(COUNTER_ADDRESS, 42), entry=0x1_0010)
    guest.vcpu.run_until_halt(max_exits=1)
    assert guest.read(COUNTER_ADDRESS, 4) == 42


def test_builders_refuse_misaligned_or_out_of_range_input() -> None:
    with pytest.raises(ValueError, match="aligned"):
        guest_programs.increment_loop(COUNTER_ADDRESS + 2, 1, locked=True, width=4)
    with pytest.raises(ValueError, match="1 MiB"):
        guest_programs.store_and_halt(0x10_0000, 1)
    with pytest.raises(ValueError, match="32 unsigned bits"):
        guest_programs.increment_loop(COUNTER_ADDRESS, 1 << 32, locked=True)
    with pytest.raises(ValueError, match="width"):
        guest_programs.xadd_loop(COUNTER_ADDRESS, 1, width=8)


# -- guests that never halt ----------------------------------------------------


def test_spinning_guest_times_out_and_the_vcpu_stays_usable(guest: Guest) -> None:
    guest.load(guest_programs.spin_forever())
    started = time.monotonic()
    with pytest.raises(KvmTimeoutError) as caught:
        guest.vcpu.run_until_halt(max_exits=10, timeout=SPIN_TIMEOUT_SECONDS)
    assert time.monotonic() - started < SPIN_TIMEOUT_SECONDS + 60  # kicked out, not hung
    assert caught.value.rip == CODE_ADDRESS  # still on its `jmp $`
    guest.load(guest_programs.store_and_halt(COUNTER_ADDRESS, 5))
    assert guest.vcpu.run_until_halt(max_exits=1) == 1  # no stale kick left behind
    assert guest.read(COUNTER_ADDRESS, 4) == 5


def test_kick_from_another_thread_interrupts_run(guest: Guest) -> None:
    install_kick_handler()
    guest.load(guest_programs.spin_forever())
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(guest.vcpu.run)
        time.sleep(0.1)
        guest.vcpu.kick()
        assert running.result(timeout=10).reason == ExitReason.INTR


_CRASH_CHILD: Final = """
import ctypes, mmap, pickle, sys
from vm_memory_tools import guest_programs
from vm_memory_tools.kvm import KvmError, KvmVm

case, size, code_address, unbacked, timeout = sys.argv[1], *map(float, sys.argv[2:])
memory = mmap.mmap(-1, int(size))
pin = ctypes.c_char.from_buffer(memory)
if case == "unbacked":
    program = guest_programs.jump_to(int(unbacked))
else:  # "garbage": undefined opcodes everywhere, interrupt vectors included
    memory[:] = b"\\xff" * int(size)
    program = b""
memory[int(code_address) : int(code_address) + len(program)] = program
with KvmVm() as vm:
    vm.add_memory(0, 0, int(size), ctypes.addressof(pin))
    vcpu = vm.create_vcpu()
    vcpu.set_real_mode(int(code_address))
    try:
        vcpu.run_until_halt(max_exits=100, timeout=timeout)
    except KvmError as error:
        sys.stdout.buffer.write(pickle.dumps(error))
"""


@pytest.mark.parametrize("case", ["unbacked", "garbage"])
def test_guest_running_off_into_nowhere_raises_kvm_error(case: str) -> None:
    """Run in a child process: whatever the guest does, the test process survives."""
    arguments = [GUEST_MEMORY_SIZE, CODE_ADDRESS, UNBACKED_ADDRESS, CRASH_TIMEOUT_SECONDS]
    child = subprocess.run(
        [sys.executable, "-c", _CRASH_CHILD, case, *map(str, arguments)],
        capture_output=True,
        timeout=SUBPROCESS_TIMEOUT_SECONDS,
        env=python_environment(),
        check=False,
    )
    assert child.returncode == 0, child.stderr.decode()
    assert child.stdout, "the guest halted instead of failing"
    error = pickle.loads(child.stdout)
    assert isinstance(error, KvmError)
    assert error.exit is not None and error.exit.reason != ExitReason.HLT
    if case == "unbacked":  # fails fast: the instruction fetch finds no memory
        assert not isinstance(error, KvmTimeoutError), str(error)
    print(f"{case}: {type(error).__name__}: {error}")


def test_kvm_error_pickles_with_its_facts(guest: Guest) -> None:
    guest.load(guest_programs.port_out_and_halt(TEST_PORT, 9))
    with pytest.raises(KvmError) as caught:
        guest.vcpu.run_until_halt(max_exits=2)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is KvmError
    assert (copy.operation, copy.exit, copy.rip) == (
        caught.value.operation,
        caught.value.exit,
        caught.value.rip,
    )


# -- guest against host on the same bytes ----------------------------------------


def _libatomic_fetch_add(width: int) -> Callable[[int, int, int], int]:
    """``__atomic_fetch_add_N(void *, T, int) -> T`` from libatomic, typed."""
    name = ctypes.util.find_library("atomic")
    if name is None:
        unavailable("libatomic is not installed (Debian: libatomic1, Alpine: libatomic)")
    library = ctypes.CDLL(name)
    value_type = {4: ctypes.c_uint32, 8: ctypes.c_uint64}[width]
    function = library[f"__atomic_fetch_add_{width}"]
    function.argtypes = [ctypes.c_void_p, value_type, ctypes.c_int]
    function.restype = value_type

    def fetch_add(address: int, value: int, order: int) -> int:
        result: int = function(address, value, order)
        return result

    return fetch_add


@dataclass(frozen=True)
class RaceResult:
    final: int
    guest_count: int
    host_count: int
    guest_seconds: float
    host_rate: float  # host fetch_adds per second while both ran

    @property
    def expected(self) -> int:
        return self.guest_count + self.host_count


def _race(guest: Guest, guest_count: int, *, locked: bool, width: int) -> RaceResult:
    """Run the increment guest while a host thread fetch_adds the same counter."""
    fetch_add = _libatomic_fetch_add(width)
    counter = guest.host_address + COUNTER_ADDRESS
    host_started = threading.Event()
    stop = threading.Event()

    def hammer() -> tuple[int, float]:
        done = 0
        host_started.set()
        began = time.perf_counter()
        while not stop.is_set():
            for _ in range(HOST_BATCH):
                fetch_add(counter, 1, SEQ_CST)
            done += HOST_BATCH
        return done, time.perf_counter() - began

    guest.memory[COUNTER_ADDRESS : COUNTER_ADDRESS + width] = bytes(width)
    guest.load(
        guest_programs.increment_loop(COUNTER_ADDRESS, guest_count, locked=locked, width=width)
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        host = pool.submit(hammer)
        host_started.wait()
        began = time.perf_counter()
        try:
            guest.vcpu.run_until_halt(max_exits=1, timeout=GUEST_TIMEOUT_SECONDS)
        finally:
            stop.set()
        guest_seconds = time.perf_counter() - began
        host_count, host_seconds = host.result()
    final = guest.read(COUNTER_ADDRESS, width)
    result = RaceResult(final, guest_count, host_count, guest_seconds, host_count / host_seconds)
    print(
        f"locked={locked} width={width}: guest {guest_count} in {guest_seconds:.2f} s, "
        f"host {host_count} at {result.host_rate:,.0f}/s, final {final}, "
        f"lost {result.expected - final}"
    )
    return result


def test_guest_lock_inc_and_host_libatomic_lose_nothing(guest: Guest) -> None:
    result = _race(guest, GUEST_INCREMENTS, locked=True, width=4)
    assert result.host_count > 0
    assert result.final == result.expected


def _plain_increments_lose_updates(guest: Guest, guest_count: int, width: int) -> None:
    """Unlocked races, up to `CONTROL_ATTEMPTS`, until one loses an update."""

    def attempt() -> RaceResult:
        result = _race(guest, guest_count, locked=False, width=width)
        assert result.final <= result.expected  # nothing may be counted twice
        return result

    provoke_overlapping(attempt, lambda result: result.final < result.expected,
                        attempts=CONTROL_ATTEMPTS, what="a lost update")


def test_guest_plain_inc_loses_updates_against_the_host(guest: Guest) -> None:
    """The control: without ``lock`` the same race loses updates, so the test can fail."""
    _plain_increments_lose_updates(guest, GUEST_INCREMENTS, width=4)


def test_guest_cmpxchg8b_and_host_libatomic_64_lose_nothing(guest: Guest) -> None:
    result = _race(guest, GUEST_CMPXCHG8B_INCREMENTS, locked=True, width=8)
    assert result.final == result.expected


def test_guest_plain_64_bit_increment_loses_updates(guest: Guest) -> None:
    _plain_increments_lose_updates(guest, GUEST_INCREMENTS_64, width=8)


def test_counter_bytes_are_little_endian_on_both_sides(guest: Guest) -> None:
    """The host reads what the guest wrote with the layout it expects (sanity check)."""
    guest.load(guest_programs.store_and_halt(COUNTER_ADDRESS, 0x0102_0304))
    guest.vcpu.run_until_halt(max_exits=1)
    assert struct.unpack_from("<I", guest.memory, COUNTER_ADDRESS) == (0x0102_0304,)
