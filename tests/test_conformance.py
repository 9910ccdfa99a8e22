"""Behaviours ported from Rust vm-memory's own unit tests, where ours had differed.

Each test names the Rust behaviour it follows; where we depart on purpose, the test
shows the departure and the README's design notes give the reason.
"""

from __future__ import annotations

import ctypes
import sys
from array import array
from collections.abc import Callable
from typing import Any

import pytest

from vm_memory import (
    DirtyBitmap,
    GuestAddress,
    GuestMemory,
    GuestMemoryMmap,
    NoMemoryRegion,
)

PAGE = 4096


def test_dirty_bitmap_ignores_marks_past_its_end() -> None:
    """Rust: `mark_dirty` clamps to the bitmap; `is_addr_set` past the end is false."""
    bitmap = DirtyBitmap(3 * PAGE)
    bitmap.mark(2 * PAGE, 10 * PAGE)  # runs past the end
    bitmap.mark(50 * PAGE, PAGE)  # entirely past the end
    bitmap.mark(0, 0)  # empty
    assert bitmap.dirty_pages() == [2]
    assert [bitmap.is_dirty(page) for page in (0, 2, 3, 50, -1)] == [False, True, False,
                                                                        False, False]
    assert bitmap.take_dirty_pages() == [2]


def test_slice_copies_count_whole_elements() -> None:
    """Rust: `VolatileSlice::copy_to`/`copy_from` copy whole `T`s and return how many."""
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE)])
    memory.write_slice(GuestAddress(0), bytes(range(1, 11)))
    piece = memory.get_slice(GuestAddress(0), 10)
    words = array("I", [0xFFFFFFFF] * 3)
    assert piece.copy_to(words) == 2
    assert words.tobytes() == bytes(range(1, 9)) + b"\xff" * 4, "no half element"
    assert piece.copy_from(array("I", [0x11111111, 0x22222222, 0x33333333])) == 2
    assert memory.read_bytes(GuestAddress(0), 10) == b"\x11" * 4 + b"\x22" * 4 + b"\x09\x0a"
    assert piece.copy_to(bytearray(4)) == 4, "bytes are elements of one byte"


def test_empty_slice_access_succeeds_anywhere() -> None:
    """Rust: `VolatileSlice::write(&[], addr)` is Ok(0) whatever `addr`."""
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE)])
    piece = memory.get_slice(GuestAddress(0x100), 16)
    piece.write(1000, b"")
    piece.read(1000, bytearray())
    assert memory.read_bytes(GuestAddress(0), PAGE) == bytes(PAGE)


def test_builders_refuse_no_regions() -> None:
    """Rust: building from no ranges is `Error::NoMemoryRegion`. An explicitly empty
    `GuestMemory(())` stays possible: the start of a memory that hot-plug fills."""
    builders: list[Callable[[list[Any]], GuestMemoryMmap]] = [
        GuestMemoryMmap.from_ranges, GuestMemoryMmap.from_ranges_memfd,
        GuestMemoryMmap.from_regions, GuestMemoryMmap.from_ranges_with_files]
    for build in builders:
        with pytest.raises(NoMemoryRegion):
            build([])
    assert GuestMemory(()).num_regions() == 0


def test_unsorted_ranges_are_sorted() -> None:
    """A deliberate departure: Rust refuses unsorted regions
    (`Error::UnsortedMemoryRegions`); we sort them, since a set of non-overlapping regions
    has one order only, and still refuse overlaps."""
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0x2000), PAGE), (GuestAddress(0), PAGE)])
    assert [region.start_value for region in memory.regions()] == [0, 0x2000]


@pytest.mark.skipif(sys.maxsize < 2**40, reason="a 1 TiB mapping needs a 64-bit address space")
@pytest.mark.parametrize("size", [64 << 30, 1 << 40], ids=["64GiB", "1TiB"])
def test_a_huge_sparse_guest_maps(size: int) -> None:
    """Rust maps anonymous memory with MAP_NORESERVE, so a guest far larger than the host
    maps and costs only what it touches."""
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), size)])
    end = GuestAddress(size - 8)
    memory.write_obj_unaligned(end, ctypes.c_uint64, 0x0123456789ABCDEF)
    assert memory.read_obj_unaligned(end, ctypes.c_uint64) == 0x0123456789ABCDEF
