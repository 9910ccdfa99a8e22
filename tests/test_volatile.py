"""Views: `VolatileSlice` (bytes in one region), `get_slices` across regions, and the typed
`VolatileRef` / `VolatileArrayRef`, checked against plain bytes kept beside the memory.

Layout: two adjacent regions, a hole, a third region, and a read-only file region.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import random
import sys
import tempfile
from collections.abc import Iterator
from typing import Final

import pytest
from host_assumptions import needs_8_byte_atomics
from support import ByteDevice

from vm_memory import (
    AlignedGuestAddress,
    DeviceRegion,
    FileOffset,
    GuestAddress,
    GuestMemory,
    GuestMemoryMmap,
    GuestRegionMmap,
    IndexOutOfRange,
    InvalidGuestAddress,
    InvalidRange,
    MisalignedAddress,
    MmapRegion,
    NoHostAddress,
    PartialBuffer,
    ReadOnlyRegion,
    VolatileArrayRef,
    VolatileRef,
    VolatileSlice,
)

PAGE: Final = mmap.PAGESIZE
FIRST: Final = 0x1_0000
SECOND: Final = FIRST + 2 * PAGE
"""Adjacent to the first region."""
THIRD: Final = 0x8_0000
READ_ONLY: Final = 0x10_0000


class Header(ctypes.Structure):
    _fields_ = (("kind", ctypes.c_uint16), ("flags", ctypes.c_uint16),
                ("length", ctypes.c_uint32))


@pytest.fixture
def memory() -> Iterator[GuestMemoryMmap]:
    """Random content everywhere; the read-only region holds bytes(range(256)) repeated."""
    rng = random.Random(5)
    with tempfile.TemporaryFile() as backing:
        backing.write(bytes(range(256)) * (PAGE // 256))
        backing.flush()
        built = GuestMemoryMmap.from_ranges_with_files(
            [(GuestAddress(FIRST), 2 * PAGE, None), (GuestAddress(SECOND), PAGE, None),
             (GuestAddress(THIRD), PAGE, None),
             (GuestAddress(READ_ONLY), PAGE, FileOffset(backing.fileno(), 0))],
            read_only=True)
        for region in built.regions()[:3]:
            region.mapping.view[:] = rng.randbytes(region.length)
        yield built


def raw(memory: GuestMemoryMmap, address: int, length: int) -> bytes:
    """Bytes straight from the region's mmap, not through the library."""
    region = memory.find_region(GuestAddress(address))
    assert region is not None
    offset = address - region.start_value
    return bytes(region.mapping.view[offset:offset + length])


# ---- VolatileSlice -------------------------------------------------------------------


def test_slice_read_write_and_bounds(memory: GuestMemoryMmap) -> None:
    view = memory.get_slice(GuestAddress(FIRST + 100), 1000)
    assert isinstance(view, VolatileSlice)
    assert len(view) == 1000 and view.address == GuestAddress(FIRST + 100)
    assert view.to_bytes() == raw(memory, FIRST + 100, 1000)
    view.write(10, b"hello")
    assert raw(memory, FIRST + 110, 5) == b"hello"
    buffer = bytearray(5)
    view.read(10, buffer)
    assert buffer == b"hello"
    view.write(995, b"12345")  # exactly up to the end
    with pytest.raises(InvalidRange):
        view.write(996, b"12345")
    with pytest.raises(InvalidRange):
        view.read(1000, bytearray(1))
    assert raw(memory, FIRST + 100 + 996, 4) == b"2345", "a refused write wrote nothing"


def test_subslice_and_split_at(memory: GuestMemoryMmap) -> None:
    view = memory.get_slice(GuestAddress(FIRST), 2 * PAGE)
    inner = view.subslice(PAGE - 3, 10)
    assert inner.address == GuestAddress(FIRST + PAGE - 3) and len(inner) == 10
    assert inner.to_bytes() == raw(memory, FIRST + PAGE - 3, 10)
    deeper = inner.subslice(2, 4)
    deeper.write(0, b"ABCD")
    assert raw(memory, FIRST + PAGE - 1, 4) == b"ABCD"
    left, right = view.split_at(PAGE)
    assert (len(left), len(right)) == (PAGE, PAGE)
    assert right.address == GuestAddress(FIRST + PAGE)
    assert left.to_bytes() + right.to_bytes() == view.to_bytes()
    empty, whole = view.split_at(0)
    assert len(empty) == 0 and len(whole) == 2 * PAGE
    whole_again, empty_end = view.split_at(2 * PAGE)
    assert len(whole_again) == 2 * PAGE and len(empty_end) == 0
    with pytest.raises(InvalidRange):
        view.split_at(2 * PAGE + 1)
    with pytest.raises(InvalidRange):
        inner.subslice(5, 6)
    with pytest.raises(InvalidRange):
        inner.subslice(11, 0)


def test_copy_to_and_copy_from_report_counts(memory: GuestMemoryMmap) -> None:
    view = memory.get_slice(GuestAddress(THIRD + 8), 16)
    small = bytearray(10)
    assert view.copy_to(small) == 10 and small == raw(memory, THIRD + 8, 10)
    large = bytearray(b"\xff" * 32)
    assert view.copy_to(large) == 16
    assert large[:16] == raw(memory, THIRD + 8, 16) and large[16:] == b"\xff" * 16
    assert view.copy_from(b"xyz") == 3 and raw(memory, THIRD + 8, 3) == b"xyz"
    memory.write_slice(GuestAddress(THIRD + 24), b"!")
    assert view.copy_from(b"Q" * 40) == 16
    assert raw(memory, THIRD + 8, 17) == b"Q" * 16 + b"!", "nothing past the slice"


def test_as_memoryview_is_zero_copy(memory: GuestMemoryMmap) -> None:
    view = memory.get_slice(GuestAddress(SECOND + 4), 8)
    buffer = view.as_memoryview()
    assert len(buffer) == 8 and not buffer.readonly
    buffer[:4] = b"zero"
    assert memory.read_bytes(GuestAddress(SECOND + 4), 4) == b"zero"
    memory.write_slice(GuestAddress(SECOND + 8), b"copy")
    assert bytes(buffer[4:]) == b"copy"
    read_only = memory.get_slice(GuestAddress(READ_ONLY + 2), 4).as_memoryview()
    assert read_only.readonly and bytes(read_only) == bytes(range(2, 6))
    with pytest.raises(TypeError):
        read_only[0] = 1


def test_slice_of_read_only_region_refuses_writes(memory: GuestMemoryMmap) -> None:
    view = memory.get_slice(GuestAddress(READ_ONLY), 64)
    assert view.to_bytes() == bytes(range(64))
    with pytest.raises(ReadOnlyRegion):
        view.write(0, b"x")
    with pytest.raises(ReadOnlyRegion):
        view.copy_from(b"x")
    assert view.to_bytes() == bytes(range(64))


def test_get_slice_must_fit_one_region(memory: GuestMemoryMmap) -> None:
    with pytest.raises(InvalidRange):
        memory.get_slice(GuestAddress(SECOND - 4), 8)  # crosses into the adjacent region
    with pytest.raises(InvalidGuestAddress):
        memory.get_slice(GuestAddress(SECOND + PAGE), 1)  # the hole
    with pytest.raises(InvalidRange):
        memory.get_slice(GuestAddress(THIRD), PAGE + 1)
    with pytest.raises(InvalidRange):
        memory.get_slice(GuestAddress(2**64 - 2), 4)  # past 2**64


def test_view_keeps_memory_alive(memory: GuestMemoryMmap) -> None:
    """A view outlives every other reference to its memory and still reads the bytes."""
    expected = raw(memory, THIRD, 32)
    view = memory.get_slice(GuestAddress(THIRD), 32)
    del memory
    gc.collect()
    assert view.to_bytes() == expected


# ---- get_slices --------------------------------------------------------------------


def test_get_slices_across_regions(memory: GuestMemoryMmap) -> None:
    start = FIRST + 2 * PAGE - 100
    views = memory.get_slices(GuestAddress(start), 300)
    assert [(v.address.raw_value(), len(v)) for v in views] == [(start, 100), (SECOND, 200)]
    assert b"".join(v.to_bytes() for v in views) == memory.read_bytes(GuestAddress(start), 300)
    assert memory.get_slices(GuestAddress(FIRST), 3 * PAGE)[1].length == PAGE
    whole = memory.get_slices(GuestAddress(FIRST), 0)
    assert sum(len(v) for v in whole) == 0
    with pytest.raises(PartialBuffer) as raised:
        memory.get_slices(GuestAddress(SECOND + PAGE - 10), 20)  # the hole cuts it
    assert (raised.value.expected, raised.value.completed, raised.value.available) == \
        (20, 0, 10)


# ---- VolatileRef / VolatileArrayRef --------------------------------------------------


@needs_8_byte_atomics
def test_volatile_ref_typed_and_atomic(memory: GuestMemoryMmap) -> None:
    view = memory.get_slice(GuestAddress(THIRD), 256)
    ref = view.get_ref(ctypes.c_uint64, 16)
    assert isinstance(ref, VolatileRef)
    ref.store(0x0102_0304_0506_0708)
    assert raw(memory, THIRD + 16, 8) == (0x0102_0304_0506_0708).to_bytes(8, sys.byteorder)
    loaded_word: object = ref.load()  # object: mypy infers c_uint64 here (see report)
    assert loaded_word == 0x0102_0304_0506_0708
    ref.write_atomic(5)
    assert ref.read_atomic() == 5
    assert ref.fetch_add(10) == 5
    assert ref.swap(100) == 15
    assert ref.compare_exchange(99, 1) == (False, 100)
    assert ref.compare_exchange(100, 1) == (True, 100)
    assert memory.read_atomic(AlignedGuestAddress.new(ctypes.c_uint64,
                                                      GuestAddress(THIRD + 16))) == 1
    header = view.get_ref(Header, 32)
    header.store(Header(1, 2, 3))
    loaded = header.load()
    assert (loaded.kind, loaded.flags, loaded.length) == (1, 2, 3)
    loaded.length = 99  # a copy: the memory does not change
    assert header.load().length == 3
    assert raw(memory, THIRD + 32, 8) == bytes(Header(1, 2, 3))


def test_volatile_ref_bounds_and_alignment(memory: GuestMemoryMmap) -> None:
    view = memory.get_slice(GuestAddress(THIRD), 64)
    with pytest.raises(MisalignedAddress):
        view.get_ref(ctypes.c_uint32, 2)
    with pytest.raises(InvalidRange):
        view.get_ref(ctypes.c_uint64, 64)
    with pytest.raises(InvalidRange):
        view.get_ref(ctypes.c_uint64, 60)
    with pytest.raises(InvalidRange):
        view.get_array_ref(ctypes.c_uint32, 0, 17)
    read_only = memory.get_slice(GuestAddress(READ_ONLY), 64).get_ref(ctypes.c_uint32, 4)
    loaded: object = read_only.load()
    assert loaded == int.from_bytes(bytes(range(4, 8)), sys.byteorder)
    assert read_only.read_atomic() == loaded
    with pytest.raises(ReadOnlyRegion):
        read_only.write_atomic(1)
    with pytest.raises(ReadOnlyRegion):
        read_only.fetch_add(1)
    with pytest.raises(ReadOnlyRegion):
        read_only.store(1)


def test_volatile_array_ref(memory: GuestMemoryMmap) -> None:
    view = memory.get_slice(GuestAddress(SECOND), PAGE)
    array = view.get_array_ref(ctypes.c_uint32, 64, 16)
    assert isinstance(array, VolatileArrayRef) and len(array) == 16
    for index, element in enumerate(array):
        element.store(index * 3)
    loaded: list[object] = [element.load() for element in array]
    assert loaded == [index * 3 for index in range(16)]
    assert raw(memory, SECOND + 64 + 4 * 15, 4) == (45).to_bytes(4, sys.byteorder)
    last: object = array[-1].load()
    first: object = array[-16].load()
    assert (last, first) == (45, 0)
    assert array[2].fetch_add(1) == 6 and array[2].read_atomic() == 7
    assert array[3].swap(0xFFFF_FFFF) == 9
    assert array[3].compare_exchange(0xFFFF_FFFF, 0) == (True, 0xFFFF_FFFF)
    assert array[4].address.raw_value() == SECOND + 64 + 16
    for index in (16, -17):
        with pytest.raises(IndexOutOfRange):  # a GuestMemoryError and an IndexError
            array[index]


def test_views_on_a_device_region() -> None:
    """Views work on memory with no host pointer; zero-copy export says why it cannot."""
    device = ByteDevice(bytes(PAGE))
    backing = device.data
    memory = GuestMemory([DeviceRegion(device, GuestAddress(0xA000 - PAGE), PAGE),
                          GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(0xA000))])
    view = memory.get_slice(GuestAddress(0xA000 - PAGE + 0x10), 32)
    view.write(0, b"device")
    assert backing[0x10:0x16] == b"device" and view.to_bytes()[:6] == b"device"
    with pytest.raises(NoHostAddress):
        view.as_memoryview()
    ref = view.get_ref(ctypes.c_uint32, 8)
    ref.write_atomic(41)
    assert ref.fetch_add(1) == 41 and ref.read_atomic() == 42
    assert backing[0x18:0x1C] == (42).to_bytes(4, sys.byteorder)
    views = memory.get_slices(GuestAddress(0xA000 - 6), 12)
    assert [len(v) for v in views] == [6, 6]
    views[0].write(0, b"device")
    views[1].write(0, b"hostmm")
    assert backing[-6:] == b"device"
    assert memory.read_bytes(GuestAddress(0xA000), 6) == b"hostmm"
