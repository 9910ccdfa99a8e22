"""The region lookup after many hot-plug changes: the page table answers as a search does.

A lookup tries the region the last access hit, then the page table of small regions (a
guess: a region on the address's page), then a binary search. Hot-plug derives each new
memory object's tables from the old one's, changing only what the insert or remove
touches. These tests drive random sequences of inserts and removes (sub-page regions
sharing a page, one-page, multi-page and large regions, refused overlaps) and check every
memory object made along the way against a plain model (a sorted list searched with
`bisect`):

- `find_region` and a one-byte read answer as the model does at every interesting
  address (each region's first and last byte, the bytes just outside, page boundaries),
  visited in two orders so the last-hit cache starts cold and warm;
- the page table is complete and sound: every page of every small region has a guess,
  and each guess is a region of this memory lying on that page (a stale or shifted entry
  would still answer right through the search, only slowly: this is what catches it);
- old snapshots answer exactly as before the changes made from them;
- calls alternating over writable, read-only and device regions (every switch a cache
  miss) refuse and succeed as the same call made cold on a fresh memory object.

On the compiled path this is the C table (`_fastpath.c`), on the pure path the dict
page table (`guest_memory.py`); the suite runs on both.
"""
# pyright: reportPrivateUsage=false

from __future__ import annotations

import bisect
import ctypes
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import ByteDevice

from vm_memory import (
    AlignedGuestAddress,
    DeviceRegion,
    GuestAddress,
    GuestMemory,
    GuestMemoryError,
    GuestMemoryRegion,
    GuestRegionMmap,
    InvalidGuestAddress,
    MmapRegion,
    PartialBuffer,
    RegionOverlap,
)

PAGE = mmap.PAGESIZE
LOOKUP_PAGE = 1 << 12
"""The page table's granularity (`_LOOKUP_SHIFT`; the C table uses the same)."""
SMALL_REGION_PAGES = 16
"""Regions spanning at most this many lookup pages are in the page table."""
BASE = 0x10_0000
SLOTS = 48
LENGTHS = (0x10, 0x100, 0x800, LOOKUP_PAGE - 0x10, LOOKUP_PAGE, 3 * LOOKUP_PAGE,
           SMALL_REGION_PAGES * LOOKUP_PAGE, (SMALL_REGION_PAGES + 1) * LOOKUP_PAGE,
           64 * LOOKUP_PAGE)
SUB_OFFSETS = (0, 0x10, 0x100, 0x800, LOOKUP_PAGE - 0x100)


@dataclass
class Model:
    """What a memory object must answer: its regions, sorted by start."""

    starts: list[int] = field(default_factory=list[int])
    regions: list[GuestMemoryRegion] = field(default_factory=list[GuestMemoryRegion])

    def find(self, value: int) -> GuestMemoryRegion | None:
        index = bisect.bisect_right(self.starts, value) - 1
        if index < 0:
            return None
        region = self.regions[index]
        return region if value < region.start_value + region.length else None

    def overlaps(self, start: int, length: int) -> bool:
        return any(start < region.start_value + region.length
                   and region.start_value < start + length for region in self.regions)

    def inserted(self, region: GuestMemoryRegion) -> Model:
        index = bisect.bisect_right(self.starts, region.start_value)
        return Model([*self.starts[:index], region.start_value, *self.starts[index:]],
                     [*self.regions[:index], region, *self.regions[index:]])

    def removed(self, index: int) -> Model:
        return Model(self.starts[:index] + self.starts[index + 1:],
                     self.regions[:index] + self.regions[index + 1:])


def make_region(start: int, length: int, mark: int) -> GuestRegionMmap:
    """A real mmap'd region whose every byte is `mark`."""
    mapping = MmapRegion.anonymous(length)
    mapping.mapping[:] = bytes([mark]) * length
    return GuestRegionMmap(mapping, GuestAddress(start))


def mark_of(region: GuestMemoryRegion) -> int:
    view = region.buffer
    assert view is not None
    return view[0]


def probes(model: Model) -> list[int]:
    """Every address worth asking about: both ends of each region and just outside
    them, and the lookup pages' boundaries around them."""
    values: set[int] = {0, BASE - 1}
    for region in model.regions:
        start, end = region.start_value, region.start_value + region.length
        page = start - start % LOOKUP_PAGE
        values.update((start - 1, start, start + region.length // 2, end - 1, end,
                       page, page - 1, page + LOOKUP_PAGE, page + LOOKUP_PAGE - 1))
    return sorted(value for value in values if value >= 0)


def read_mark(memory: GuestMemory, value: int) -> int | None:
    """The byte at `value` through two fast paths (None where nothing is backed, with
    each path's typed error)."""
    try:
        unaligned = memory.read_obj_unaligned(GuestAddress(value), ctypes.c_uint8)
    except PartialBuffer:
        unaligned = None
    try:
        aligned = memory.read_obj(AlignedGuestAddress.new(ctypes.c_uint8, GuestAddress(value)))
    except InvalidGuestAddress:
        aligned = None
    assert aligned == unaligned, (hex(value), aligned, unaligned)
    return unaligned


PageGuess = Callable[[GuestMemory, int], object]


def page_guess(memory: GuestMemory, value: int) -> object:
    return memory._page_guess(value)


def check_against(memory: GuestMemory, model: Model, guess: PageGuess = page_guess) -> None:
    """`memory` answers as `model` everywhere (cold, then warm in reverse order), and its
    page table is complete and sound."""
    assert list(memory.regions()) == model.regions
    values = probes(model)
    for order in (values, values[::-1]):
        for value in order:
            expected = model.find(value)
            assert memory.find_region(GuestAddress(value)) is expected, hex(value)
            assert read_mark(memory, value) == (None if expected is None
                                                else mark_of(expected)), hex(value)
    for region in model.regions:
        first = region.start_value // LOOKUP_PAGE
        last = (region.start_value + region.length - 1) // LOOKUP_PAGE
        if last - first >= SMALL_REGION_PAGES:
            continue
        for page in range(first, last + 1):
            guessed = guess(memory, page * LOOKUP_PAGE)
            assert guessed is not None, (hex(page * LOOKUP_PAGE), "no guess for a small page")
            assert any(guessed is held for held in model.regions), "a guess of another memory"
            assert isinstance(guessed, GuestMemoryRegion)
            low = guessed.start_value // LOOKUP_PAGE
            high = (guessed.start_value + guessed.length - 1) // LOOKUP_PAGE
            assert low <= page <= high, (hex(page * LOOKUP_PAGE), guessed)


Step = tuple[str, int, int, int]
"""("insert", slot, sub-offset index, length index) or ("remove", index, 0, 0)."""

steps = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.integers(0, SLOTS - 1),
                  st.integers(0, len(SUB_OFFSETS) - 1), st.integers(0, len(LENGTHS) - 1)),
        st.tuples(st.just("remove"), st.integers(0, 1_000), st.just(0), st.just(0))),
    min_size=1, max_size=40)


def run_steps(plan: list[Step]) -> list[tuple[GuestMemory, Model]]:
    """Apply `plan` from an empty memory; every memory object made, with its model."""
    memory = GuestMemory(())
    model = Model()
    made = [(memory, model)]
    for number, (action, where, sub, size) in enumerate(plan):
        if action == "insert":
            start = BASE + where * LOOKUP_PAGE + SUB_OFFSETS[sub]
            length = LENGTHS[size]
            if model.overlaps(start, length):
                region = make_region(start, length, 1 + number % 250)
                with pytest.raises(RegionOverlap):
                    memory.insert_region(region)
                continue
            region = make_region(start, length, 1 + number % 250)
            memory, model = memory.insert_region(region), model.inserted(region)
        else:
            if not model.regions:
                continue
            index = where % len(model.regions)
            held = model.regions[index]
            memory, removed = memory.remove_region(held.start, held.length)
            assert removed is held
            model = model.removed(index)
        check_against(memory, model)
        made.append((memory, model))
    return made


@given(steps)
def test_lookup_after_inserts_and_removes_answers_as_a_search(plan: list[Step]) -> None:
    made = run_steps(plan)
    for memory, model in made:  # every snapshot still answers as when it was made
        check_against(memory, model)


def test_alternating_between_sub_page_regions_of_one_page() -> None:
    """Four regions on one lookup page: the table names one of them; the others are
    found by the search, and alternating between them (the cache always missing) reads
    each one's own bytes, then removing each in turn keeps the page answered."""
    regions: list[GuestMemoryRegion] = [
        make_region(BASE + offset, 0x100, 10 + index)
        for index, offset in enumerate((0, 0x400, 0x800, 0xC00))]
    memory = GuestMemory(regions)
    model = Model([region.start_value for region in regions], regions)
    for _ in range(3):
        for region in regions:
            assert read_mark(memory, region.start_value + 0x10) == mark_of(region)
    check_against(memory, model)
    for region in list(regions):
        index = model.regions.index(region)
        memory, _ = memory.remove_region(region.start, region.length)
        model = model.removed(index)
        check_against(memory, model)


def test_the_lookup_check_can_fail() -> None:
    """The controls: a model that still lists a removed region, and a page table that
    forgets one page of a small region, are both caught."""
    regions: list[GuestMemoryRegion] = [
        make_region(BASE + index * 2 * LOOKUP_PAGE, LOOKUP_PAGE, 1 + index)
        for index in range(4)]
    memory = GuestMemory(regions)
    model = Model([region.start_value for region in regions], regions)
    check_against(memory, model)
    smaller, _ = memory.remove_region(regions[1].start, regions[1].length)
    with pytest.raises(AssertionError):
        check_against(smaller, model)
    forgotten = regions[2].start_value

    def forgetful(memory: GuestMemory, value: int) -> object:
        return None if value == forgotten else memory._page_guess(value)

    with pytest.raises(AssertionError, match="no guess"):
        check_against(memory, model, forgetful)


def read_only_region(start: int, content: bytes) -> GuestRegionMmap:
    """A read-only mmap'd region (a memfd mapped read-only) holding `content`."""
    fd = os.memfd_create("vm-memory-lookup-test")
    try:
        os.write(fd, content)
        return GuestRegionMmap(MmapRegion.from_file(fd, len(content), read_only=True),
                               GuestAddress(start))
    finally:
        os.close(fd)


def outcome(action: Callable[[], object]) -> tuple[str, str]:
    try:
        return "ok", repr(action())
    except GuestMemoryError as error:
        return type(error).__name__, str(error)


def test_alternating_refusals_answer_as_cold_calls() -> None:
    """Alternating calls over a writable, a read-only, a device and a read-only device
    region (each switch a cache miss answered by the page table) refuse and succeed
    exactly as the same call on a fresh memory object (cold), round after round; the
    read-only regions' bytes never change."""
    starts = [BASE + index * 2 * LOOKUP_PAGE for index in range(4)]
    protected = bytes(range(256)) * (LOOKUP_PAGE // 256)
    regions: list[GuestMemoryRegion] = [
        make_region(starts[0], LOOKUP_PAGE, 7),
        read_only_region(starts[1], protected),
        DeviceRegion(ByteDevice(bytes(LOOKUP_PAGE)), GuestAddress(starts[2]), LOOKUP_PAGE),
        DeviceRegion(ByteDevice(bytes(LOOKUP_PAGE)), GuestAddress(starts[3]), LOOKUP_PAGE,
                     read_only=True),
    ]
    warm = GuestMemory(regions)

    def calls(memory: GuestMemory, start: int) -> list[Callable[[], object]]:
        u64 = AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(start + 0x40))
        plain = GuestAddress(start + 0x41)
        return [lambda: memory.read_obj(u64), lambda: memory.write_obj(u64, 5),
                lambda: memory.read_obj_unaligned(plain, ctypes.c_uint32),
                lambda: memory.write_obj_unaligned(plain, ctypes.c_uint32, 6),
                lambda: memory.read_atomic(u64), lambda: memory.write_atomic(u64, 5),
                lambda: memory.fetch_add(u64, 0), lambda: memory.swap(u64, 5),
                lambda: memory.compare_exchange(u64, 5, 5),
                lambda: memory.write_slice(plain, b"\x06\x00\x00\x00"),
                lambda: memory.read_bytes(plain, 4)]

    refused = 0
    for _ in range(3):
        for number in range(len(calls(warm, starts[0]))):
            for start in starts:  # each call alternates over the four regions
                cold = outcome(calls(GuestMemory(regions), start)[number])
                assert outcome(calls(warm, start)[number]) == cold, (hex(start), number)
                refused += cold[0] == "ReadOnlyRegion"
    assert refused == 3 * 2 * 7, refused  # 7 storing calls refused on 2 read-only regions
    view = regions[1].buffer
    assert view is not None and bytes(view) == protected
