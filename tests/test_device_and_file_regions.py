"""Regions without host memory: `DeviceRegion` (a Python device model) and `FileRegion`
(pread/pwrite on a file, never mapped), mixed with mmap regions, against the reference
model; and the atomic table on each: the device serves atomics under its lock (shown
exact under contending threads, while the same harness doing a plain read-then-write
loses updates), the file region refuses them with a typed error.
"""

from __future__ import annotations

import array
import ctypes
import mmap
import os
import random
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import pytest
from host_assumptions import WIDE_ATOMIC_BYTES, wide_atomic
from reference_model import MemoryModel, ModelRegion
from support import ByteDevice, provoke, random_access

from vm_memory import (
    AlignedGuestAddress,
    AtomicAccessUnsupported,
    DeviceError,
    DeviceRegion,
    FileRegion,
    GuestAddress,
    GuestMemory,
    GuestMemoryMmap,
    GuestRegionMmap,
    MmapRegion,
    NoHostAddress,
    ReadOnlyRegion,
    RegionIoError,
)

PAGE: Final = mmap.PAGESIZE
MMAP_START: Final = 0x1_0000
DEVICE_START: Final = MMAP_START + PAGE
FILE_START: Final = DEVICE_START + PAGE
RO_DEVICE_START: Final = 0x8_0000
RO_FILE_START: Final = RO_DEVICE_START + PAGE
FILE_OFFSET: Final = 3 * PAGE


@dataclass
class Mixed:
    memory: GuestMemory
    model: MemoryModel
    devices: dict[int, ByteDevice]
    files: dict[int, tuple[int, int]]
    """Region start -> (fd, file offset)."""


@pytest.fixture
def mixed() -> Iterator[Mixed]:
    """mmap | device | file region, adjacent; then a read-only device and file region."""
    rng = random.Random(11)
    contents = {start: rng.randbytes(PAGE) for start in
                (MMAP_START, DEVICE_START, FILE_START, RO_DEVICE_START, RO_FILE_START)}
    with tempfile.TemporaryFile() as writable, tempfile.TemporaryFile() as read_only:
        for backing, start in ((writable, FILE_START), (read_only, RO_FILE_START)):
            backing.write(b"\xee" * FILE_OFFSET + contents[start])
            backing.flush()
        mapping = MmapRegion.anonymous(PAGE)
        mapping.mapping[:] = contents[MMAP_START]
        devices = {DEVICE_START: ByteDevice(contents[DEVICE_START]),
                   RO_DEVICE_START: ByteDevice(contents[RO_DEVICE_START])}
        memory = GuestMemory([
            GuestRegionMmap(mapping, GuestAddress(MMAP_START)),
            DeviceRegion(devices[DEVICE_START], GuestAddress(DEVICE_START), PAGE),
            FileRegion(writable.fileno(), GuestAddress(FILE_START), PAGE,
                       file_offset=FILE_OFFSET),
            DeviceRegion(devices[RO_DEVICE_START], GuestAddress(RO_DEVICE_START), PAGE,
                         read_only=True),
            FileRegion(read_only.fileno(), GuestAddress(RO_FILE_START), PAGE,
                       file_offset=FILE_OFFSET, read_only=True),
        ])
        model = MemoryModel([ModelRegion(start, bytearray(content),
                                         start in (RO_DEVICE_START, RO_FILE_START))
                             for start, content in contents.items()])
        yield Mixed(memory, model, devices,
                    {FILE_START: (writable.fileno(), FILE_OFFSET),
                     RO_FILE_START: (read_only.fileno(), FILE_OFFSET)})


def real_bytes(mixed: Mixed) -> tuple[bytes, ...]:
    """Each region's bytes from where they really live: mmap, device array, file."""
    result: list[bytes] = []
    for region in mixed.memory.regions():
        start = region.start_value
        if isinstance(region, GuestRegionMmap):
            result.append(bytes(region.mapping.view[:]))
        elif start in mixed.devices:
            result.append(bytes(mixed.devices[start].data))
        else:
            fd, offset = mixed.files[start]
            result.append(os.pread(fd, region.length, offset))
    return tuple(result)


EDGES: Final = (MMAP_START, DEVICE_START, FILE_START, FILE_START + PAGE, RO_DEVICE_START,
                RO_FILE_START, RO_FILE_START + PAGE)


def _one_operation(memory: GuestMemory, model: MemoryModel, rng: random.Random) -> None:
    address = rng.choice(EDGES) + rng.randrange(-40, 40)
    length = rng.choice([1, 3, 8, 100, PAGE, 2 * PAGE + 1])
    random_access(memory, model, rng, address, length)


def test_mixed_region_kinds_agree_with_the_model(mixed: Mixed) -> None:
    """Reads and writes across mmap, device and file regions (read-only ones included)
    agree with the model, and each region's real storage ends with the model's bytes."""
    rng = random.Random(3)
    for _ in range(600):
        _one_operation(mixed.memory, mixed.model, rng)
    assert real_bytes(mixed) == mixed.model.snapshot()


def u32(address: int) -> AlignedGuestAddress[ctypes.c_uint32]:
    return AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(address))


def i16(address: int) -> AlignedGuestAddress[ctypes.c_int16]:
    return AlignedGuestAddress.new(ctypes.c_int16, GuestAddress(address))


def test_device_region_serves_the_atomic_table(mixed: Mixed) -> None:
    memory, device = mixed.memory, mixed.devices[DEVICE_START]
    word = u32(DEVICE_START + 8)
    memory.write_atomic(word, 0xFFFF_FFFE)
    assert device.data[8:12] == (0xFFFF_FFFE).to_bytes(4, sys.byteorder)
    assert memory.fetch_add(word, 3) == 0xFFFF_FFFE
    assert memory.read_atomic(word) == 1, "wraps at the type's width"
    assert memory.fetch_sub(word, 2) == 1 and memory.read_atomic(word) == 0xFFFF_FFFF
    assert memory.fetch_and(word, 0xF0) == 0xFFFF_FFFF and memory.read_atomic(word) == 0xF0
    assert memory.fetch_or(word, 0x0F) == 0xF0 and memory.fetch_xor(word, 0xFF) == 0xFF
    assert memory.swap(word, 7) == 0 and memory.read_atomic(word) == 7
    assert memory.compare_exchange(word, 6, 9) == (False, 7)
    assert memory.compare_exchange(word, 7, 9) == (True, 7)
    signed = i16(DEVICE_START + 16)
    memory.write_atomic(signed, -1)
    assert memory.fetch_add(signed, 1) == -1 and memory.read_atomic(signed) == 0
    assert memory.fetch_sub(signed, 1) == 0 and memory.read_atomic(signed) == -1
    with pytest.raises(NoHostAddress):
        memory.get_host_address(GuestAddress(DEVICE_START))


def test_read_only_device_refuses_stores_without_calling_the_device(mixed: Mixed) -> None:
    memory, device = mixed.memory, mixed.devices[RO_DEVICE_START]
    before = bytes(device.data)
    value = memory.read_atomic(wide_atomic(RO_DEVICE_START))
    assert value == int.from_bytes(before[:WIDE_ATOMIC_BYTES], sys.byteorder)
    calls = device.calls
    for attempt in (lambda: memory.write_atomic(wide_atomic(RO_DEVICE_START), 1),
                    lambda: memory.swap(wide_atomic(RO_DEVICE_START), 1),
                    lambda: memory.compare_exchange(wide_atomic(RO_DEVICE_START), value, 1),
                    lambda: memory.fetch_add(wide_atomic(RO_DEVICE_START), 1),
                    lambda: memory.write_obj(wide_atomic(RO_DEVICE_START), 1)):
        with pytest.raises(ReadOnlyRegion):
            attempt()
    assert device.calls == calls and bytes(device.data) == before


def test_file_region_refuses_every_atomic(mixed: Mixed) -> None:
    memory = mixed.memory
    fd, offset = mixed.files[FILE_START]
    before = os.pread(fd, PAGE, offset)
    word = wide_atomic(FILE_START + 16)
    attempts: dict[str, Callable[[], Any]] = {
        "read_atomic": lambda: memory.read_atomic(word),
        "write_atomic": lambda: memory.write_atomic(word, 1),
        "swap": lambda: memory.swap(word, 1),
        "compare_exchange": lambda: memory.compare_exchange(word, 0, 1),
        "fetch_add": lambda: memory.fetch_add(word, 1),
        "fetch_xor": lambda: memory.fetch_xor(word, 1),
    }
    for name, attempt in attempts.items():
        with pytest.raises(AtomicAccessUnsupported) as raised:
            attempt()
        assert raised.value.address == FILE_START + 16, name
        assert "pread" in raised.value.region_kind
    assert os.pread(fd, PAGE, offset) == before, "no atomic wrote anything"
    assert memory.read_obj(word) == int.from_bytes(before[16:16 + WIDE_ATOMIC_BYTES], sys.byteorder)
    with pytest.raises(NoHostAddress):
        memory.get_host_address(GuestAddress(FILE_START))


def test_file_region_past_end_of_file_reads_zeros() -> None:
    with tempfile.TemporaryFile() as backing:
        backing.write(b"short")
        backing.flush()
        memory = GuestMemory([FileRegion(backing.fileno(), GuestAddress(0), PAGE)])
        assert memory.read_bytes(GuestAddress(0), 10) == b"short" + bytes(5)
        memory.write_slice(GuestAddress(PAGE - 2), b"en")
        assert os.fstat(backing.fileno()).st_size == PAGE
        assert os.pread(backing.fileno(), 2, PAGE - 2) == b"en"


def test_mmap_memory_takes_only_host_backed_regions() -> None:
    with pytest.raises(TypeError):
        GuestMemoryMmap([DeviceRegion(ByteDevice(bytes(PAGE)), GuestAddress(0), PAGE)])  # type: ignore[list-item]


# ---- The device's atomics under contention ------------------------------------------


def _contend(memory: GuestMemory, increment: Callable[[], object], threads: int,
             per_thread: int) -> None:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        def work() -> None:
            for _ in range(per_thread):
                increment()
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(previous)


def test_device_atomics_lose_no_update_while_plain_increments_do() -> None:
    """fetch_add on a device region is exact under contending threads; the plain
    read-then-write control on the same device loses updates (the harness can fail)."""
    device = ByteDevice(bytes(PAGE))
    memory = GuestMemory([DeviceRegion(device, GuestAddress(0), PAGE)])
    counter, control = wide_atomic(0), wide_atomic(8)  # the width is incidental
    threads, per_thread = 4, 5_000
    _contend(memory, lambda: memory.fetch_add(counter, 1), threads, per_thread)
    assert memory.read_atomic(counter) == threads * per_thread

    def plain_increments_lost() -> int:
        memory.write_obj(control, 0)
        _contend(memory, lambda: memory.write_obj(control, memory.read_obj(control) + 1),
                 threads, per_thread)
        return threads * per_thread - memory.read_obj(control)

    provoke(plain_increments_lost, lambda lost: lost > 0, attempts=5,
            what="plain increments losing an update")


# ---- a device model that misbehaves ------------------------------------------------------

class _Misbehaving(ByteDevice):
    """A device whose `read` answers `answer(size)` and whose `write` may fail."""

    def __init__(self, answer: Callable[[int], object], write_error: OSError | None = None
                 ) -> None:
        super().__init__(bytes(PAGE))
        self.answer = answer
        self.write_error = write_error

    def read(self, offset: int, size: int) -> Any:
        self.calls += 1
        return self.answer(size)

    def write(self, offset: int, data: bytes) -> None:
        if self.write_error is not None:
            raise self.write_error
        super().write(offset, data)


def _eio(size: int) -> object:
    raise OSError(5, "Input/output error")


def _released(size: int) -> object:
    view = memoryview(bytes(size))
    view.release()
    return view


MISBEHAVING_READS: Final[dict[str, tuple[Callable[[int], object], type[Exception]]]] = {
    "None": (lambda size: None, DeviceError),
    "a str": (lambda size: "x" * size, DeviceError),
    "too short": (lambda size: bytes(size - 1), DeviceError),
    # as many items as bytes asked for, 4 bytes each: was accepted by the atomics
    "an array of u32": (lambda size: array.array("I", bytes(4 * size)), DeviceError),
    "an OSError": (_eio, RegionIoError),
    "a released memoryview": (_released, DeviceError),
}


@pytest.mark.parametrize("case", sorted(MISBEHAVING_READS))
def test_a_device_answering_wrongly_is_a_typed_error_on_every_access(case: str) -> None:
    """Plain, atomic and bulk reads alike: `DeviceError` for an answer that is not
    exactly the bytes asked for (a raw TypeError or ValueError escaped before, and an
    array with as many items as bytes asked for fed an atomic), `RegionIoError` for the
    device's OSError."""
    answer, expected = MISBEHAVING_READS[case]
    memory = GuestMemory([DeviceRegion(_Misbehaving(answer), GuestAddress(DEVICE_START), PAGE)])
    word = u32(DEVICE_START + 8)
    accesses: dict[str, Callable[[], object]] = {
        "read_obj": lambda: memory.read_obj(word),
        "read_atomic": lambda: memory.read_atomic(word),
        "fetch_add": lambda: memory.fetch_add(word, 1),
        "read_slice": lambda: memory.read_slice(GuestAddress(DEVICE_START), bytearray(16)),
    }
    for name, access in accesses.items():
        try:
            access()
        except expected:
            continue
        except Exception as error:
            pytest.fail(f"{name}: {error!r}, not {expected.__name__}")
        pytest.fail(f"{name}: accepted")


def test_a_device_whose_write_fails_is_a_region_io_error() -> None:
    device = _Misbehaving(bytes, OSError(28, "No space left on device"))
    memory = GuestMemory([DeviceRegion(device, GuestAddress(DEVICE_START), PAGE)])
    for store in (lambda: memory.write_obj(u32(DEVICE_START), 1),
                  lambda: memory.fetch_add(u32(DEVICE_START), 1),
                  lambda: memory.write_slice(GuestAddress(DEVICE_START), b"abcd")):
        with pytest.raises(RegionIoError) as caught:
            store()
        assert caught.value.errno == 28


def test_a_device_reading_its_own_region_is_refused_not_a_deadlock() -> None:
    """A device whose `read` reads its own region again waited on its own lock for
    ever; now the inner access is `DeviceError` (run on a thread: the old code hangs)."""
    memory: GuestMemory | None = None

    def answer(size: int) -> object:
        assert memory is not None
        return memory.read_bytes(GuestAddress(DEVICE_START + 64), size)

    memory = GuestMemory([DeviceRegion(_Misbehaving(answer), GuestAddress(DEVICE_START), PAGE)])
    outcome: list[BaseException] = []

    def reader() -> None:
        try:
            memory.read_bytes(GuestAddress(DEVICE_START), 4)
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the device's own read deadlocked on its region"
    assert len(outcome) == 1 and isinstance(outcome[0], DeviceError), outcome
    assert "accessed its region again" in str(outcome[0])
