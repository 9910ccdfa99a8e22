"""The pure path's region table: persistent, so a hot-plug change costs what it changes.

A `GuestMemory` is immutable: an insert or a remove makes a new memory object and the
old one stays valid for whoever holds it. The table is built so the two share every
part the change does not touch (the compiled path's table in `_fastpath.c` has the same
shape):

- the regions, sorted, in chunks (tuples) of at most `CHUNK_MAX`: a change makes one
  new chunk (two when one splits, one from two when a small one merges) and a new tuple
  of the chunks, with each chunk's first start and the index of its first region;
- the page table (a page's first address -> a small region on that page, a guess
  checked at each use) in `PAGE_BUCKETS` dicts chosen by `key % PAGE_BUCKETS`: a change
  copies the dicts of the pages it touches and the tuple of dicts. A page's first
  address, not its number, is the key: a region starting on a page's first byte is
  keyed by its own `start_value`, with no int made for it (32 bytes a region of a
  100,000-region build).

So one change costs about `CHUNK_MAX + chunks + PAGE_BUCKETS + pages / PAGE_BUCKETS`,
not the number of regions. Nothing here is ever changed in place once a memory object
refers to it.
"""

from __future__ import annotations

import operator
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate, chain, repeat
from operator import add, attrgetter, le, lt, mod, mul, sub
from typing import Final

from vm_memory.bulk import consume
from vm_memory.region import GuestMemoryRegion

LOOKUP_SHIFT: Final = 12
"""The page table's granularity (4 KiB slots)."""
LOOKUP_PAGE: Final = 1 << LOOKUP_SHIFT
SLOT_MASK: Final = -LOOKUP_PAGE
"""`address & SLOT_MASK`: the first address of `address`'s slot, its page-table key."""
SMALL_REGION_SLOTS: Final = 16
"""Regions spanning at most this many slots go in the page table."""
CHUNK_MAX: Final = 256
"""A chunk never holds more regions (an insert into a full one splits it)."""
CHUNK_BUILD: Final = 128
"""A new memory's chunks: room to grow before one splits."""
CHUNK_MIN: Final = 64
"""A smaller chunk merges with a neighbour where both fit in one."""
PAGE_BUCKETS: Final = 251
"""The page table's dicts (a prime: strided regions spread over all of them; and prime
to `LOOKUP_PAGE`, so `key % PAGE_BUCKETS` spreads slots as their numbers would)."""

_START_VALUE: Final = attrgetter("start_value")
_LENGTH: Final = attrgetter("length")
_END_VALUE: Final = attrgetter("end_value")

Chunks = tuple[tuple[GuestMemoryRegion, ...], ...]
PageTable = tuple[dict[int, GuestMemoryRegion], ...]

# Read with getattr: typeshed types these through protocols the strict checkers call unknown.
rshift: Final[Callable[[int, int], int]] = getattr(operator, "rshift")  # noqa: B009
and_: Final[Callable[[int, int], int]] = getattr(operator, "and_")  # noqa: B009
_SET_FIRST: Final[Callable[[dict[int, GuestMemoryRegion], int, GuestMemoryRegion],
                           GuestMemoryRegion]] = getattr(dict, "setdefault")  # noqa: B009
"""Name a region for a page unless one is named already."""

EMPTY_PAGES: Final[PageTable] = tuple({} for _ in range(PAGE_BUCKETS))
"""The page table with no page: shared, never changed (a change copies a dict first)."""


def small_region_pages(region: GuestMemoryRegion) -> range:
    """The page-table keys of `region`'s slots if it is small enough to be in the table,
    else none."""
    first = region.start_value & SLOT_MASK
    last = (region.end_value - 1) & SLOT_MASK
    return range(first, last + LOOKUP_PAGE, LOOKUP_PAGE) \
        if last - first < SMALL_REGION_SLOTS * LOOKUP_PAGE else range(0)


def apart(before: GuestMemoryRegion, after: GuestMemoryRegion) -> bool:
    """Whether `before` ends at or below the start of `after` (sorted, no overlap)."""
    return before.start_value < after.start_value and before.end_value <= after.start_value


def sorted_apart(regions: Sequence[GuestMemoryRegion]) -> bool:
    """Whether each of `regions` ends at or below the start of the next (a region is
    never empty, so they are sorted too)."""
    return all(map(le, map(_END_VALUE, regions), map(_START_VALUE, regions[1:])))


def build_chunks(regions: Sequence[GuestMemoryRegion]) -> Chunks:
    """`regions` (sorted) in chunks of `CHUNK_BUILD`."""
    return tuple(tuple(regions[index:index + CHUNK_BUILD])
                 for index in range(0, len(regions), CHUNK_BUILD))


def chunk_index(chunks: Chunks) -> tuple[list[int], list[int]]:
    """Each chunk's first start, and the index of its first region."""
    return ([chunk[0].start_value for chunk in chunks],
            [0, *accumulate(len(chunk) for chunk in chunks[:-1])] if chunks else [])


def chunk_of_index(bases: list[int], index: int) -> int:
    """The chunk holding the region at `index` (given each chunk's first index)."""
    return bisect_right(bases, index) - 1


def chunks_inserted(chunks: Chunks, bases: list[int], count: int, index: int,
                    region: GuestMemoryRegion) -> Chunks:
    """`chunks` with `region` inserted at `index` (0 <= index <= count)."""
    if not chunks:
        return ((region,),)
    number = len(chunks) - 1 if index == count else chunk_of_index(bases, index)
    chunk = chunks[number]
    at = index - bases[number]
    run = (*chunk[:at], region, *chunk[at:])
    half = len(run) // 2
    parts = (run,) if len(run) <= CHUNK_MAX else (run[:half], run[half:])
    return (*chunks[:number], *parts, *chunks[number + 1:])


def chunks_removed(chunks: Chunks, bases: list[int], index: int) -> Chunks:
    """`chunks` without the region at `index`; a chunk left small merges with a
    neighbour where both fit in one."""
    number = chunk_of_index(bases, index)
    first, dropped = number, 1
    size = len(chunks[number]) - 1
    if 0 < size < CHUNK_MIN:
        if number + 1 < len(chunks) and size + len(chunks[number + 1]) <= CHUNK_MAX:
            dropped = 2
        elif number > 0 and size + len(chunks[number - 1]) <= CHUNK_MAX:
            first, dropped = number - 1, 2
    run = tuple(region for chunk in chunks[first:first + dropped] for region in chunk)
    at = index - bases[first]
    run = run[:at] + run[at + 1:]
    return (*chunks[:first], *((run,) if run else ()), *chunks[first + dropped:])


class _PageEdit:
    """Changes to a page table, copying each dict it changes once."""

    def __init__(self, pages: PageTable) -> None:
        self.pages = list(pages)
        self.copied: set[int] = set()

    def bucket(self, page: int) -> dict[int, GuestMemoryRegion]:
        """The dict of the slot keyed `page`, copied on first change."""
        number = page % PAGE_BUCKETS
        if number not in self.copied:
            self.pages[number] = self.pages[number].copy()
            self.copied.add(number)
        return self.pages[number]

    def add(self, region: GuestMemoryRegion) -> None:
        """Point the slots of a small `region` at it (where no region is yet)."""
        for page in small_region_pages(region):
            if page not in self.pages[page % PAGE_BUCKETS]:
                self.bucket(page)[page] = region

    def done(self) -> PageTable:
        return tuple(self.pages)


def build_pages(regions: Sequence[GuestMemoryRegion]) -> PageTable:
    """The page table of `regions` (sorted): the first region on each page named. Made
    in one pass over all of them (loops in C), not a region at a time: each small
    region's pages, the bucket of each page, and `setdefault` into the buckets, which
    keeps the first region named for a page."""
    starts = list(map(_START_VALUE, regions))
    named: Iterable[GuestMemoryRegion] = regions
    if regions and not any(map(and_, starts, repeat(LOOKUP_PAGE - 1))) \
            and max(map(_LENGTH, regions)) <= LOOKUP_PAGE:
        # each region on one page, from its first byte: its start is its page's key
        # (the test makes no int per region: `start & (LOOKUP_PAGE - 1)` is 0, a cached int)
        pages: Sequence[int] = starts
    else:
        firsts = list(map(and_, starts, repeat(SLOT_MASK)))
        lasts = list(map(and_, map(sub, map(_END_VALUE, regions), repeat(1)),
                         repeat(SLOT_MASK)))
        if firsts == lasts:  # every region on one page: its own
            pages = firsts
        else:  # each small region once per page it touches, a large one not at all
            slots = list(map(rshift, map(sub, lasts, firsts), repeat(LOOKUP_SHIFT)))
            counts = list(map(mul, map(lt, slots, repeat(SMALL_REGION_SLOTS)),
                              map(add, slots, repeat(1))))
            pages = list(chain.from_iterable(map(
                range, firsts, map(add, firsts, map(mul, counts, repeat(LOOKUP_PAGE))),
                repeat(LOOKUP_PAGE))))
            named = chain.from_iterable(map(repeat, regions, counts))
    buckets: list[dict[int, GuestMemoryRegion]] = [{} for _ in range(PAGE_BUCKETS)]
    consume(map(_SET_FIRST, map(buckets.__getitem__,
                                      map(mod, pages, repeat(PAGE_BUCKETS))),
                 pages, named))
    # the buckets no page landed in stay the shared empty ones
    return tuple(bucket or empty for bucket, empty in zip(buckets, EMPTY_PAGES, strict=True))


def pages_inserted(pages: PageTable, region: GuestMemoryRegion) -> PageTable:
    """`pages` with the pages of `region` named where no region is yet."""
    if not small_region_pages(region):
        return pages
    edit = _PageEdit(pages)
    edit.add(region)
    return edit.done()


def pages_removed(pages: PageTable, region: GuestMemoryRegion,
                  neighbours: Sequence[GuestMemoryRegion]) -> PageTable:
    """`pages` without `region`; a slot it held goes to a neighbour on the same page
    (the table is a guess checked at each use: any region on the page will do, and only
    the removed region's two neighbours can share its pages)."""
    edit: _PageEdit | None = None
    for page in small_region_pages(region):
        if pages[page % PAGE_BUCKETS].get(page) is not region:
            continue
        edit = edit or _PageEdit(pages)
        bucket = edit.bucket(page)
        del bucket[page]
        for neighbour in neighbours:
            if page in small_region_pages(neighbour):
                bucket[page] = neighbour
                break
    return pages if edit is None else edit.done()
