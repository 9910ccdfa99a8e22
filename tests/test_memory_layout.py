"""Where regions may sit in a memory: overlaps are refused (with both regions' facts,
whatever the order given), adjacent regions make one span, a region may end exactly at
the top of the 64-bit space but not pass it, and a memory holds only regions."""

from __future__ import annotations

import mmap
from typing import Final

import pytest

from vm_memory import (
    GuestAddress,
    GuestMemory,
    GuestMemoryMmap,
    GuestRegionMmap,
    InvalidRange,
    MmapRegion,
    RegionOverlap,
)

PAGE: Final = mmap.PAGESIZE
LIMIT: Final = 1 << 64


def _region(start: int, size: int = PAGE) -> GuestRegionMmap:
    return GuestRegionMmap(MmapRegion.anonymous(size), GuestAddress(start))


@pytest.mark.parametrize(("first", "second"), [
    ((0x1000, PAGE), (0x1000, PAGE)),
    ((0x1000, 2 * PAGE), (0x2000, PAGE)),
    ((0x1000, 4 * PAGE), (0x2000, PAGE)),
    ((0x1000, PAGE), (0x1FFF, 1)),
    ((LIMIT - 2 * PAGE, 2 * PAGE), (LIMIT - PAGE, PAGE)),
], ids=["same start", "partial", "contained", "last byte", "at the top"])
@pytest.mark.parametrize("given_reversed", [False, True], ids=["in order", "reversed"])
def test_overlapping_regions_are_refused(first: tuple[int, int], second: tuple[int, int],
                                         given_reversed: bool) -> None:
    regions = [_region(*first), _region(*second)]
    if given_reversed:
        regions.reverse()
    for build in (GuestMemory, GuestMemoryMmap, GuestMemoryMmap.from_regions):
        with pytest.raises(RegionOverlap) as raised:
            build(regions)
        error = raised.value
        facts = (error.first_start, error.first_length, error.second_start,
                 error.second_length)
        assert facts == (*first, *second)


def test_overlap_refused_through_from_ranges() -> None:
    with pytest.raises(RegionOverlap) as raised:
        GuestMemoryMmap.from_ranges([(GuestAddress(0x3000), PAGE),
                                     (GuestAddress(0x2800), PAGE)])
    assert (raised.value.first_start, raised.value.second_start) == (0x2800, 0x3000)


def test_adjacent_regions_are_accepted() -> None:
    memory = GuestMemoryMmap.from_regions([_region(0x2000), _region(0x1000), _region(0x3000)])
    assert [region.start for region in memory.regions()] == \
        [GuestAddress(0x1000), GuestAddress(0x2000), GuestAddress(0x3000)]
    memory.write_slice(GuestAddress(0x1FFE), b"abcd" * 1025)
    assert memory.read_bytes(GuestAddress(0x1FFE), 4100) == b"abcd" * 1025


@pytest.mark.parametrize("start", [LIMIT - PAGE + 1, LIMIT - 1, LIMIT - PAGE // 2])
def test_region_passing_the_top_is_refused(start: int) -> None:
    with pytest.raises(InvalidRange) as raised:
        _region(start)
    assert (raised.value.address, raised.value.length) == (start, PAGE)


def test_region_ending_exactly_at_the_top_is_accepted() -> None:
    region = _region(LIMIT - PAGE)
    assert region.last_addr == GuestAddress(LIMIT - 1)
    memory = GuestMemoryMmap.from_regions([region])
    memory.write_slice(GuestAddress(LIMIT - 3), b"end")
    assert memory.read_bytes(GuestAddress(LIMIT - 3), 3) == b"end"


def test_mmap_memory_holds_only_mmap_regions() -> None:
    with pytest.raises(TypeError):
        GuestMemoryMmap([object()])  # type: ignore[list-item]


@pytest.mark.parametrize("thing", [object(), "region"], ids=["object", "str"])
def test_memory_holds_only_regions(thing: object) -> None:
    with pytest.raises(TypeError):
        GuestMemory([thing])  # type: ignore[list-item]
