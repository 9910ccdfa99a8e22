"""GuestMemory: the whole access interface, written once over the region primitives.

A `GuestMemory` is an immutable, sorted collection of non-overlapping regions of any
info. A lookup tries, fastest first: the region the last access hit, a page table of the
small regions, then a binary search. Every method takes the address first. The access
table (see the README):

- `read_atomic`/`write_atomic`/`swap`/`compare_exchange`/`fetch_*`: one hardware atomic
  access on an `AlignedGuestAddress[T]`, T an AtomicAccess type.
- `read_obj`/`write_obj`: any ByteValued T at an aligned address, bounds-checked, not
  atomic.
- `read_obj_unaligned`/`write_obj_unaligned`: any address, may span regions.
- `read`/`write` (partial counts), `read_slice`/`write_slice`/`read_bytes` (all or
  nothing).

One contract on every path: each method has a fast path for the common case (a region
with a buffer, the region the last access hit, an exact `int`, an `Ordering` member),
built from the same rules as its general path, which checks everything in order and
raises the typed error before touching memory. A fast path only ever admits what the
general path would accept with the same result; everything else falls through to it.
"""
# pyright: reportPrivateUsage=false

from __future__ import annotations

import ctypes
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import pairwise
from operator import attrgetter
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Final,
    NoReturn,
    Self,
    SupportsIndex,
    TypeVar,
    overload,
)

from vm_memory.address import ADDRESS_SPACE_SIZE, GuestAddress, MemoryRegionAddress, check_u64
from vm_memory.aligned_address import AlignedGuestAddress, AlignmentInfo, set_fast_atomics
from vm_memory.atomic_access import AtomicInteger, atomic_type_info
from vm_memory.atomic_backend import host_atomics, refuse_unsupported_width, run_host
from vm_memory.atomic_operations import (
    COMPARE_EXCHANGE,
    OPERATIONS,
    AtomicOperation,
)
from vm_memory.bitmap import DEFAULT_PAGE_SIZE
from vm_memory.buffers import buffer_address, byte_view
from vm_memory.byte_valued import _LAYOUTS, Aggregate, ScalarValue, TypeLayout, layout_of
from vm_memory.errors import (
    InvalidArgumentType,
    InvalidGuestAddress,
    InvalidGuestValue,
    InvalidRange,
    MappingError,
    MisalignedAddress,
    NoHostAddress,
    NotAtomicAccess,
    PartialBuffer,
    ReadOnlyRegion,
    RegionOverlap,
)
from vm_memory.implementation import compiled
from vm_memory.lifetime import lifetime_lock, register
from vm_memory.ordering import Ordering, check_ordering
from vm_memory.region import (
    GuestMemoryRegion,
    NoRegion,
    is_region,
    regions_tracking_dirty_pages,
)
from vm_memory.region_table import (
    EMPTY_PAGES,
    Chunks,
    PageTable,
    apart,
    build_chunks,
    build_pages,
    chunk_index,
    chunk_of_index,
    chunks_inserted,
    chunks_removed,
    pages_inserted,
    pages_removed,
    sorted_apart,
)
from vm_memory.region_table import (
    LOOKUP_SHIFT as _LOOKUP_SHIFT,
)
from vm_memory.region_table import (
    PAGE_BUCKETS as _PAGE_BUCKETS,
)
from vm_memory.region_table import (
    SLOT_MASK as _SLOT_MASK,
)
from vm_memory.stream_io import StreamSink, StreamSource, gather_write, scatter_read
from vm_memory.volatile import VolatileSlice

if TYPE_CHECKING:
    from vm_memory.buffer_types import Buffer, WritableBuffer

_V = TypeVar("_V")
_A = TypeVar("_A", bound=Aggregate)
_R = TypeVar("_R", bound=GuestMemoryRegion)

Span = tuple[GuestMemoryRegion, int, int]
"""(region, offset in it, byte count): one piece of a range that crosses regions."""

_SEQ_CST: Final = Ordering.SEQ_CST
_NO_REGION: Final = NoRegion()
_OWNED_BUFFERS: Final = (bytes, bytearray)
"""Buffer types that own their memory: never guest memory, so never overlapping it."""
_START_VALUE: Final = attrgetter("start_value")

_OPERATION_INDEX: Final = {name: index for index, name in enumerate(OPERATIONS)}
"""Where each operation's entry sits in an `AlignmentInfo.atomics` tuple."""
_COMPACT: Final = (1 << 30) - 1
"""The largest magnitude CPython compares as a one-digit int (its cheapest comparison):
an entry's first value bounds, inside the type's range."""
_PAGE_HITS_MAX: Final = 1 << 14
"""The most pages a memory remembers its regions for (`GuestMemory._page_region`)."""
_PRIMED: list[AlignmentInfo] = []
"""Every type's info given fast-path entries (what `forget_fast_atomics` takes back)."""


def _not_aligned_address(address: object, method: str) -> InvalidArgumentType:
    return InvalidArgumentType(
        f"{method}'s address", "an AlignedGuestAddress[T] (build one with "
        "AlignedGuestAddress.new(T, address))", address)


def _not_address(address: object, method: str) -> InvalidArgumentType:
    return InvalidArgumentType(f"{method}'s address", "a GuestAddress", address)


def _aligned_parts(address: AlignedGuestAddress[Any], method: str) -> tuple[TypeLayout, int]:
    """The layout and the int behind an aligned address; anything else refused.

    Exact type, never the attributes alone: an object that only looks like an address
    (its own `_info`, `_guest_value`, `__class__`) would choose what the paths trust."""
    if type(address) is not AlignedGuestAddress:
        raise _not_aligned_address(address, method)
    return address._layout, address._guest_value


def _guest_value(address: GuestAddress, method: str) -> int:
    """The int behind a guest address (an aligned one too); anything else (an int, a
    region offset, a look-alike) refused."""
    kind = type(address)
    if kind is not GuestAddress and kind is not AlignedGuestAddress:  # type: ignore[comparison-overlap]
        raise _not_address(address, method)
    return address._guest_value


def _overlaps(buffer: memoryview, spans: list[Span]) -> bool:
    """Whether the caller's buffer may share bytes with the guest memory of `spans` (a
    view of guest memory itself): a copy across regions must then go through a bounce
    buffer, or a piece copied first would overwrite bytes a later piece still reads."""
    if len(spans) < 2 or type(buffer.obj) in _OWNED_BUFFERS:
        return False
    start = buffer_address(buffer)
    if start is None:
        return True
    end = start + len(buffer)
    return any(region.host_address is not None
               and region.host_address + offset < end
               and start < region.host_address + offset + count
               for region, offset, count in spans)


def _mark(spans: Iterable[Span]) -> None:
    """Mark the pages of `spans` dirty where their regions track writes."""
    for region, offset, count in spans:
        if region.dirty is not None and count:
            region.dirty.mark(offset, count)


def _read_spans(spans: list[Span], destination: memoryview) -> None:
    """Copy `spans` into `destination`. A region without a buffer may fail mid-way:
    then nothing reaches `destination` (the pieces go through a bounce buffer first)."""
    bounce = _overlaps(destination, spans) or any(region.buffer is None
                                                   for region, _, _ in spans)
    target = memoryview(bytearray(len(destination))) if bounce else destination
    done = 0
    for region, offset, count in spans:
        piece = target[done:done + count]
        source = region.buffer
        if source is not None:
            piece[:] = source[offset:offset + count]
        else:
            region.read_into(offset, piece)
        done += count
    if bounce:
        destination[:] = target


def _write_spans(spans: list[Span], source: memoryview) -> None:
    """Copy `source` into `spans`, all or nothing (read-only spans already refused).

    Regions without a buffer (files, devices) can fail, so they are written first; each
    region's `write_from` is all or nothing, and when two or more such regions are
    written, the old bytes of each are kept and put back if a later one fails. Memory
    with a buffer cannot fail, so it is written last.
    """
    if _overlaps(source, spans):
        source = memoryview(bytes(source))
    pieces: list[tuple[GuestMemoryRegion, int, memoryview]] = []
    done = 0
    for region, offset, count in spans:
        pieces.append((region, offset, source[done:done + count]))
        done += count
    fallible = [piece for piece in pieces if piece[0].buffer is None]
    saved: list[tuple[GuestMemoryRegion, int, memoryview]] = []
    if len(fallible) > 1:
        for region, offset, piece in fallible:
            old = memoryview(bytearray(len(piece)))
            region.read_into(offset, old)
            saved.append((region, offset, old))
    written = 0
    try:
        for region, offset, piece in fallible:
            region.write_from(offset, piece)
            written += 1
    except BaseException:
        for region, offset, old in reversed(saved[:written]):
            region.write_from(offset, old)
        raise
    for region, offset, piece in pieces:
        target = region.buffer
        if target is not None:
            target[offset:offset + len(piece)] = piece
    _mark(spans)


def sorted_without_overlap(regions: Iterable[_R]) -> list[_R]:
    """`regions` sorted by start address; `RegionOverlap` if two of them overlap."""
    ordered = sorted(regions, key=_START_VALUE)
    for before, after in pairwise(ordered):
        if before.end_value > after.start_value:
            raise RegionOverlap(before.start_value, before.length, after.start_value,
                                after.length)
    return ordered


class _PureMemoryBase:
    """On the pure path GuestMemory keeps its lookup in its own slots; a new object starts
    with the empty table, as the compiled base's does (`cls.__new__(cls)` alone makes an
    empty memory on both paths), until `_install` sets its own once."""

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        self = super().__new__(cls)
        set_field = object.__setattr__  # GuestMemory's slots (the only subclass)
        set_field(self, "_installed", False)
        set_field(self, "_chunks", ())
        set_field(self, "_firsts", [])
        set_field(self, "_bases", [])
        set_field(self, "_count", 0)
        set_field(self, "_pages", EMPTY_PAGES)
        set_field(self, "_regions_made", ())
        set_field(self, "_last", _NO_REGION)
        set_field(self, "_page_hits", {})
        return self


if TYPE_CHECKING or compiled is None:
    _MemoryBase = _PureMemoryBase
    _MEMORY_SLOTS: tuple[str, ...] = ("__weakref__", "_bases", "_chunks", "_count", "_firsts",
                                      "_installed", "_last", "_page_hits", "_pages",
                                      "_regions_made")
else:  # the region table and the hot methods live in the compiled base (MemoryCore)
    _MemoryBase = compiled.MemoryCore
    _MEMORY_SLOTS = ("__weakref__",)


class GuestMemory(_MemoryBase):
    """Guest physical memory made of regions; immutable (hot-plug returns new objects).

    `GuestMemory(())` is an empty memory, a starting point for hot-plug.
    """

    __slots__ = _MEMORY_SLOTS

    # Pure-path lookup, fastest first: the region the last access hit (any region of this
    # memory is a valid guess, so threads may race on it harmlessly); a page table of the
    # small regions, so thousands of them cost one dict probe; a binary search over the
    # chunks' first starts, then in the chunk. The table is persistent (see
    # vm_memory/region_table.py): a hot-plug change shares what it does not touch. (The
    # compiled path keeps the same in its C table.)
    _chunks: Chunks
    _firsts: list[int]
    _bases: list[int]
    _count: int
    _installed: bool
    _last: GuestMemoryRegion
    _pages: PageTable
    _page_hits: dict[int, GuestMemoryRegion]
    _regions_made: tuple[GuestMemoryRegion, ...] | None

    _hotplug_skips_init: ClassVar[bool] = True
    """Whether hot-plug may make this class's new objects without calling `__init__`
    (checking only the region that changes; made by `cls.__new__(cls)`); False for a
    subclass with its own `__init__` or `__new__` unless it says otherwise."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if ("__init__" in vars(cls) or "__new__" in vars(cls)) \
                and "_hotplug_skips_init" not in vars(cls):
            cls._hotplug_skips_init = False

    def __init__(self, regions: Iterable[GuestMemoryRegion]) -> None:
        try:
            regions = list(regions)
        except TypeError:
            raise InvalidArgumentType("regions", "an iterable of GuestMemoryRegion",
                                      regions) from None
        for region in regions:
            self._admit(region)
        ordered = sorted_without_overlap(regions)
        self._install(tuple(ordered))
        with lifetime_lock():  # no close can slip between the check and the registration
            for region in ordered:
                if region.closed:
                    raise MappingError(region.length, f"{region!r} is closed")
            register(self)

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        """Refused: a copy would be a memory the lifetime registry does not know (on both
        paths alike). Share a memory by reference, or its regions' fds with a peer."""
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    @classmethod
    def _admit(cls, region: object) -> None:
        """Refuse what cannot be one of this class's regions (subclasses narrow it)."""
        if not is_region(region):
            raise InvalidArgumentType("a region", "a GuestMemoryRegion (of a class that "
                                      "keeps the fields the access paths trust)", region)

    # The lookup primitives. Pure-path versions; the compiled base replaces each.

    def _install(self, regions: tuple[GuestMemoryRegion, ...]) -> None:
        """Set up the lookup for `regions` (sorted, checked), once (checked again here,
        as the compiled base does: the table must never be wrong)."""
        self._check_not_installed()
        if not isinstance(regions, tuple):
            raise TypeError("_install: a tuple of regions")
        one_of_each_class = dict(zip(map(type, regions), regions, strict=True)).values()
        if not all(map(is_region, one_of_each_class)) or not sorted_apart(regions):
            raise TypeError("_install: sorted, non-overlapping, constructed regions")
        self._set_chunks(build_chunks(regions))
        self._pages = build_pages(regions)
        self._regions_made = regions
        self._page_hits = {}
        self._last = _NO_REGION
        self._installed = True

    def _set_chunks(self, chunks: Chunks) -> None:
        """(Pure path) Hold `chunks` and their index."""
        self._chunks = chunks
        self._firsts, self._bases = chunk_index(chunks)
        self._count = self._bases[-1] + len(chunks[-1]) if chunks else 0

    def _install_changed(self, old: GuestMemory, index: int,
                         region: GuestMemoryRegion | None) -> None:
        """Set up the lookup from `old`'s, with `region` inserted at `index` or (region
        None) `old`'s region at `index` removed, sharing every part the change does not
        touch: work proportional to the change. The caller has checked the change;
        this checks again (as the compiled base does) that it fits `old`'s table."""
        self._check_not_installed()
        if not isinstance(old, GuestMemory):
            raise TypeError("_install_changed(old, index, region)")
        if not isinstance(index, int):
            raise TypeError("an integer is required")
        if region is not None and not is_region(region):
            raise TypeError("_install_changed: a constructed region")
        if not old._installed or not 0 <= index <= old._count - (region is None) \
                or (region is not None and (
                    (index > 0 and not apart(old._nth_region(index - 1), region))
                    or (index < old._count and not apart(region, old._nth_region(index))))):
            if abs(index) >= 1 << 63:
                raise OverflowError("Python int too large to convert to C ssize_t")
            raise ValueError("_install_changed: the change does not fit")
        if region is not None:
            self._set_chunks(chunks_inserted(old._chunks, old._bases, old._count, index,
                                             region))
            self._pages = pages_inserted(old._pages, region)
        else:
            removed = old._nth_region(index)
            self._set_chunks(chunks_removed(old._chunks, old._bases, index))
            self._pages = pages_removed(
                old._pages, removed,
                [self._nth_region(near) for near in (index - 1, index)
                 if 0 <= near < self._count])
        self._regions_made = None
        self._page_hits = {}
        self._last = _NO_REGION
        self._installed = True

    def _check_not_installed(self) -> None:
        """(Pure path) Refuse a second table: a memory's regions never change."""
        if self._installed:  # `__init__` called again (as the compiled base says)
            raise AttributeError("a memory's regions are fixed at construction")

    def _page_guess(self, value: int) -> GuestMemoryRegion | None:
        """The region the page table names for `value`'s page, or None (for tests)."""
        key = value & _SLOT_MASK
        return self._pages[key % _PAGE_BUCKETS].get(key)

    def _index_at(self, value: int) -> int:
        """The index of the last region starting at or below `value`, or -1."""
        number = bisect_right(self._firsts, value) - 1
        if number < 0:
            return -1
        return self._bases[number] + bisect_right(self._chunks[number], value,
                                                  key=_START_VALUE) - 1

    def _nth_region(self, index: int, /) -> GuestMemoryRegion:
        """The region at `index` in address order (0 <= index < num_regions())."""
        if not 0 <= index < self._count:
            raise IndexError("region index out of range")
        number = chunk_of_index(self._bases, index)
        return self._chunks[number][index - self._bases[number]]

    def _region_at(self, value: int) -> GuestMemoryRegion:
        """The region holding `value` (remembered for the next access), or `_NO_REGION`."""
        key = value & _SLOT_MASK
        region = self._pages[key % _PAGE_BUCKETS].get(key)
        if region is None or not region.start_value <= value < region.end_value:
            number = bisect_right(self._firsts, value) - 1
            if number < 0:
                return _NO_REGION
            chunk = self._chunks[number]
            region = chunk[bisect_right(chunk, value, key=_START_VALUE) - 1]
            if value >= region.end_value:
                return _NO_REGION
        self._last = region
        return region

    def _page_region(self, value: int) -> GuestMemoryRegion:
        """`_region_at(value)`, remembered for `value`'s page in `_page_hits` when it
        covers the whole page: the fast paths' second guess, one dict probe, after which
        only the region's upper limit needs checking (its start is at or below the
        page's). A page it does not cover is remembered as `_NO_REGION`, which admits
        nothing: the next probe finds it instead of raising KeyError (a plain dict is
        probed faster than one with `__missing__`). At most `_PAGE_HITS_MAX` pages are
        remembered (then it starts afresh)."""
        region = self._region_at(value)
        page = value >> _LOOKUP_SHIFT
        hits = self._page_hits
        if len(hits) >= _PAGE_HITS_MAX:
            hits.clear()
        if region.start_value <= page << _LOOKUP_SHIFT \
                and (page + 1) << _LOOKUP_SHIFT <= region.end_value:
            hits[page] = region
        else:  # known not covered: the next probe finds no region, not a KeyError
            hits[page] = _NO_REGION
        return region

    @property
    def _regions(self) -> tuple[GuestMemoryRegion, ...]:
        """The regions as a tuple, made on first use (a change shares chunks instead)."""
        regions = self._regions_made
        if regions is None:
            regions = self._regions_made = tuple(
                region for chunk in self._chunks for region in chunk)
        return regions

    def holds(self, region: object) -> bool:
        """Whether `region` (this very object) is one of this memory's regions."""
        if not is_region(region):
            return False
        index = self._index_at(region.start_value)
        return index >= 0 and self._nth_region(index) is region

    def uses_host_memory(self, low: int, high: int) -> bool:
        """Whether a region of this memory reaches host memory in [low, high)."""
        for region in self._regions:
            host = region.host_address
            if host is not None and host < high and low < host + region.length:
                return True
        return False

    # ---- Layout --------------------------------------------------------------------

    def regions(self) -> Sequence[GuestMemoryRegion]:
        """The regions, sorted by start address."""
        return self._regions

    def num_regions(self) -> int:
        """How many regions there are."""
        return self._count

    def __iter__(self) -> Iterator[GuestMemoryRegion]:
        return iter(self._regions)

    def find_region(self, address: GuestAddress) -> GuestMemoryRegion | None:
        """The region containing `address`, or None."""
        region = self._region_at(_guest_value(address, "find_region"))
        return None if region is _NO_REGION else region

    def last_addr(self) -> GuestAddress:
        """The highest guest address backed by a region; raises if there are none."""
        count = self.num_regions()
        if not count:
            raise InvalidGuestAddress(0)
        return self._nth_region(count - 1).last_addr

    def address_in_range(self, address: GuestAddress) -> bool:
        """Whether a region contains `address`."""
        return self.find_region(address) is not None

    def check_address(self, address: GuestAddress) -> GuestAddress | None:
        """`address` if a region contains it, else None."""
        return address if self.find_region(address) is not None else None

    def check_range(self, address: GuestAddress, length: int) -> bool:
        """Whether all of `[address, address + length)` is backed (a range passing 2**64
        is not)."""
        length = check_u64(length, "length")
        value = _guest_value(address, "check_range")
        return _covered(self._spans(value, length)) == length

    def to_region_addr(
        self, address: GuestAddress
    ) -> tuple[GuestMemoryRegion, MemoryRegionAddress] | None:
        """The region containing `address` and the offset inside it, or None."""
        value = _guest_value(address, "to_region_addr")
        region = self._region_at(value)
        if region is _NO_REGION:
            return None
        return region, MemoryRegionAddress(value - region.start_value)

    def get_host_address(self, address: GuestAddress) -> int:
        """The host virtual address behind `address`, for passing to KVM or a device."""
        value = _guest_value(address, "get_host_address")
        region = self._region_at(value)
        if region is _NO_REGION:
            raise InvalidGuestAddress(value)
        if region.host_address is None:
            raise NoHostAddress(value, region.kind)
        return region.host_address + value - region.start_value

    # ---- The one lookup and the one span walker -------------------------------------

    def _checked_start(self, address: GuestAddress, length: int, method: str) -> int:
        """The int behind `address`, checking that `length` bytes from it stay below 2**64."""
        value = _guest_value(address, method)
        if value + length > ADDRESS_SPACE_SIZE:
            raise InvalidRange(value, length, "the range passes 2**64")
        return value

    def _locate(self, value: int, size: int) -> tuple[GuestMemoryRegion, int]:
        """The region holding all of `[value, value + size)` and the offset, or raise."""
        region = self._region_at(value)
        if region is _NO_REGION:
            raise InvalidGuestAddress(value)
        offset = value - region.start_value
        if offset + size > region.length:
            raise InvalidRange(value, size, f"the access crosses the end of {region!r}")
        return region, offset

    def _spans(self, value: int, length: int) -> list[Span]:
        """The pieces covering `[value, value + length)`, in order, up to a hole."""
        spans: list[Span] = []
        index = self._index_at(value)
        regions = self.num_regions()
        remaining = length
        while remaining > 0 and 0 <= index < regions:
            region = self._nth_region(index)
            offset = value - region.start_value
            if offset < 0 or offset >= region.length:
                break
            count = min(remaining, region.length - offset)
            spans.append((region, offset, count))
            remaining -= count
            value += count
            index += 1
        return spans

    def _whole_spans(self, value: int, length: int, *, writing: bool) -> list[Span]:
        """The pieces of `[value, value + length)`, which must all be backed (and
        writable when `writing`), else the typed error with nothing touched."""
        spans = self._spans(value, length)
        covered = _covered(spans)
        if covered < length:
            raise PartialBuffer(value, length, 0, covered)
        if writing:
            _refuse_read_only(spans)
        return spans

    # ---- Bulk copies ---------------------------------------------------------------

    def read(self, address: GuestAddress, buffer: WritableBuffer) -> int:
        """Copy guest memory into `buffer`, stopping at a hole; returns the bytes copied.

        Raises `InvalidGuestAddress` if nothing at `address` is backed (and `buffer`
        is not empty).
        """
        destination = byte_view(buffer, writable=True, what="read's buffer")
        length = len(destination)
        value = self._checked_start(address, length, "read")
        if length == 0:
            return 0
        spans = self._spans(value, length)
        if not spans:
            raise InvalidGuestAddress(value)
        covered = _covered(spans)
        _read_spans(spans, destination[:covered])
        return covered

    def write(self, address: GuestAddress, data: Buffer) -> int:
        """Copy `data` into guest memory, stopping at a hole; returns the bytes copied.

        A read-only region anywhere in the reachable span refuses the whole write.
        """
        source = byte_view(data, writable=False, what="write's buffer")
        length = len(source)
        value = self._checked_start(address, length, "write")
        if length == 0:
            return 0
        spans = self._spans(value, length)
        if not spans:
            raise InvalidGuestAddress(value)
        _refuse_read_only(spans)
        covered = _covered(spans)
        _write_spans(spans, source[:covered])
        return covered

    def read_slice(self, address: GuestAddress, buffer: WritableBuffer) -> None:
        """Fill `buffer` from guest memory, or raise `PartialBuffer` having copied nothing."""
        destination = byte_view(buffer, writable=True, what="read_slice's buffer")
        length = len(destination)
        value = self._checked_start(address, length, "read_slice")
        region = self._last
        if not region.start_value <= value < region.end_value:
            try:
                region = self._page_hits[value >> _LOOKUP_SHIFT]
            except KeyError:
                region = _NO_REGION
            if not value < region.end_value:  # a page hit covers its whole page
                region = self._page_region(value)
        offset = value - region.start_value
        source = region.buffer
        if source is not None and offset + length <= region.length:  # one region's buffer
            destination[:] = source[offset:offset + length]
            return
        _read_spans(self._whole_spans(value, length, writing=False), destination)

    def _read_slice_general(self, address: GuestAddress, buffer: WritableBuffer) -> None:
        destination = byte_view(buffer, writable=True, what="read_slice's buffer")
        value = self._checked_start(address, len(destination), "read_slice")
        _read_spans(self._whole_spans(value, len(destination), writing=False), destination)

    def write_slice(self, address: GuestAddress, data: Buffer) -> None:
        """Copy all of `data` into guest memory, or raise having written nothing."""
        source = byte_view(data, writable=False, what="write_slice's buffer")
        length = len(source)
        value = self._checked_start(address, length, "write_slice")
        region = self._last
        if not region.start_value <= value < region.end_value:
            try:
                region = self._page_hits[value >> _LOOKUP_SHIFT]
            except KeyError:
                region = _NO_REGION
            if not value < region.end_value:  # a page hit covers its whole page
                region = self._page_region(value)
        offset = value - region.start_value
        target = region.buffer
        if target is not None and offset + length <= region.length and not region.read_only:
            target[offset:offset + length] = source  # one writable region's buffer
            if region.dirty is not None and length:
                region.dirty.mark(offset, length)
            return
        _write_spans(self._whole_spans(value, length, writing=True), source)

    def _write_slice_general(self, address: GuestAddress, data: Buffer) -> None:
        source = byte_view(data, writable=False, what="write_slice's buffer")
        value = self._checked_start(address, len(source), "write_slice")
        _write_spans(self._whole_spans(value, len(source), writing=True), source)

    def read_bytes(self, address: GuestAddress, length: int) -> bytes:
        """`length` bytes from guest memory, or raise `PartialBuffer` (before allocating)."""
        length = check_u64(length, "length")
        value = self._checked_start(address, length, "read_bytes")
        region = self._region_at(value)
        offset = value - region.start_value
        source = region.buffer
        if source is not None and offset + length <= region.length:
            return source[offset:offset + length].tobytes()
        spans = self._whole_spans(value, length, writing=False)
        buffer = bytearray(length)
        _read_spans(spans, memoryview(buffer))
        return bytes(buffer)

    # ---- Typed, not atomic ---------------------------------------------------------
    # Fast paths: the region the last access hit, with a buffer, and a struct-coded or
    # typed-view scalar. Everything else, and every error, goes through the general path
    # below each. The fast paths are written out in each method on purpose: a shared
    # helper would cost a Python call (about 60 ns), a third of the whole operation.

    @overload
    def read_obj_unaligned(self, address: GuestAddress, ctype: type[_A]) -> _A: ...
    @overload
    def read_obj_unaligned(self, address: GuestAddress,
                           ctype: type[ScalarValue[_V]]) -> _V: ...
    def read_obj_unaligned(self, address: GuestAddress, ctype: type[Any]) -> Any:
        """A value of ByteValued `ctype` at any address, possibly across regions."""
        kind = type(address)
        if kind is not GuestAddress and kind is not AlignedGuestAddress:  # type: ignore[comparison-overlap]
            return self._read_obj_unaligned_general(address, ctype)  # says what is wrong
        try:
            layout = _LAYOUTS[ctype]
        except Exception:  # the general path says what is wrong
            return self._read_obj_unaligned_general(address, ctype)
        value = address._guest_value
        region = self._last
        unpack = layout.struct_unpack
        if layout.ctype is not ctype:  # see layout_of: a hit must be this very type
            return self._read_obj_unaligned_general(address, ctype)
        if region.start_value <= value < region.read_limit and unpack is not None:
            return unpack(region.buffer, value - region.start_value)[0]
        # Another region: the last hit on its page first (no Python call), else a search.
        try:
            region = self._page_hits[value >> _LOOKUP_SHIFT]
        except KeyError:
            region = _NO_REGION
        if not value < region.read_limit:  # a page hit covers its whole page
            region = self._page_region(value)
        if region.start_value <= value < region.read_limit and unpack is not None:
            self._last = region
            return unpack(region.buffer, value - region.start_value)[0]
        return self._read_obj_unaligned_general(address, ctype)

    def _read_obj_unaligned_general(self, address: GuestAddress, ctype: type[Any]) -> Any:
        layout = layout_of(ctype)
        value = self._checked_start(address, layout.size, "read_obj_unaligned")
        region = self._region_at(value)
        buffer = region.buffer
        if buffer is not None and value + layout.size <= region.end_value:
            return _unpack(layout, buffer, value - region.start_value, value)
        scratch = bytearray(layout.size)
        self.read_slice(address, scratch)
        return _unpack(layout, scratch, 0, value)

    @overload
    def write_obj_unaligned(self, address: GuestAddress, ctype: type[_A], value: _A) -> None:
        ...
    @overload
    def write_obj_unaligned(self, address: GuestAddress, ctype: type[ScalarValue[_V]],
                            value: _V) -> None: ...
    def write_obj_unaligned(self, address: GuestAddress, ctype: type[Any], value: Any) -> None:
        """Store `value` as ByteValued `ctype` at any address, possibly across regions."""
        kind = type(address)
        if kind is not GuestAddress and kind is not AlignedGuestAddress:  # type: ignore[comparison-overlap]
            return self._write_obj_unaligned_general(address, ctype, value)
        try:
            layout = _LAYOUTS[ctype]
        except Exception:  # the general path says what is wrong
            return self._write_obj_unaligned_general(address, ctype, value)
        raw = address._guest_value
        region = self._last
        pack = layout.struct_pack
        if region.start_value <= raw < region.write_limit and pack is not None \
                and layout.ctype is ctype and type(value) is int \
                and layout.minimum <= value <= layout.maximum:
            pack(region.buffer, raw - region.start_value, value)  # checked: cannot fail
            if region.dirty is not None:
                region.dirty.mark(raw - region.start_value, layout.size)
            return None
        return self._write_obj_unaligned_general(address, ctype, value)

    def _write_obj_unaligned_general(self, address: GuestAddress, ctype: type[Any],
                                     value: Any) -> None:
        layout = layout_of(ctype)
        raw = self._checked_start(address, layout.size, "write_obj_unaligned")
        self._region_at(raw)  # remember the region for the next access
        scratch = bytearray(layout.size)
        layout.pack_into(scratch, 0, value)  # validates the value before any store
        self.write_slice(address, scratch)

    @overload
    def read_obj(self, address: AlignedGuestAddress[_A]) -> _A: ...
    @overload
    def read_obj(self, address: AlignedGuestAddress[ScalarValue[_V]]) -> _V: ...
    def read_obj(self, address: AlignedGuestAddress[Any]) -> Any:
        """The value at an aligned address: bounds-checked, not guaranteed atomic."""
        if type(address) is not AlignedGuestAddress:  # see _aligned_parts
            raise _not_aligned_address(address, "read_obj")
        layout: TypeLayout = address._info.layout
        value = address._guest_value
        region = self._last
        if not region.start_value <= value < region.read_limit:
            # another region: the last hit on its page (no Python call), else a search
            try:
                region = self._page_hits[value >> _LOOKUP_SHIFT]
            except KeyError:
                region = _NO_REGION
            if not value < region.read_limit:  # a page hit covers its whole page
                region = self._page_region(value)
                if not region.start_value <= value < region.read_limit:
                    return self._read_obj_general(address)
            self._last = region
        try:  # the typed view: one subscript, for an aligned native integer
            return region.typed_views[layout.native_code][  # type: ignore[index]
                (value - region.start_value) >> layout.shift]
        except KeyError:
            unpack = layout.struct_unpack
            if unpack is not None:
                if layout.native_code is not None:
                    region.typed_view(layout.native_code, layout.size)
                return unpack(region.buffer, value - region.start_value)[0]
        return self._read_obj_general(address)

    def _read_obj_general(self, address: AlignedGuestAddress[Any]) -> Any:
        layout, value = _aligned_parts(address, "read_obj")
        region, offset = self._locate(value, layout.size)
        buffer = region.buffer
        if buffer is not None:
            return _unpack(layout, buffer, offset, value)
        scratch = bytearray(layout.size)
        region.read_into(offset, memoryview(scratch))
        return _unpack(layout, scratch, 0, value)

    @overload
    def write_obj(self, address: AlignedGuestAddress[_A], value: _A) -> None: ...
    @overload
    def write_obj(self, address: AlignedGuestAddress[ScalarValue[_V]], value: _V) -> None: ...
    def write_obj(self, address: AlignedGuestAddress[Any], value: Any) -> None:
        """Store at an aligned address: bounds-checked, not guaranteed atomic."""
        if type(address) is not AlignedGuestAddress:  # see _aligned_parts
            raise _not_aligned_address(address, "write_obj")
        layout: TypeLayout = address._info.layout
        raw = address._guest_value
        region = self._last
        if not region.start_value <= raw < region.write_limit:
            # another region: the last hit on its page (no Python call), else a search
            try:
                region = self._page_hits[raw >> _LOOKUP_SHIFT]
            except KeyError:
                region = _NO_REGION
            if not raw < region.write_limit:  # a page hit covers its whole page
                region = self._page_region(raw)
                if not region.start_value <= raw < region.write_limit:
                    self._write_obj_general(address, value)
                    return
            self._last = region
        if type(value) is int and layout.minimum <= value <= layout.maximum:
            offset = raw - region.start_value
            try:  # the typed view: one subscript, for an aligned native integer
                region.typed_views[layout.native_code][  # type: ignore[index]
                    offset >> layout.shift] = value
            except KeyError:
                pack = layout.struct_pack
                if pack is None:  # not a struct-coded integer: the general path below
                    offset = -1
                else:
                    if layout.native_code is not None:
                        region.typed_view(layout.native_code, layout.size)
                    pack(region.buffer, offset, value)  # checked: cannot fail
            if offset >= 0:
                if region.dirty is not None:
                    region.dirty.mark(offset, layout.size)
                return
        self._write_obj_general(address, value)

    def _write_obj_general(self, address: AlignedGuestAddress[Any], value: Any) -> None:
        layout, raw = _aligned_parts(address, "write_obj")
        region, offset = self._locate(raw, layout.size)
        if region.read_only:
            raise ReadOnlyRegion(raw, layout.size)
        scratch = bytearray(layout.size)
        layout.pack_into(scratch, 0, value)
        _write_spans([(region, offset, layout.size)], memoryview(scratch))

    # ---- Atomic --------------------------------------------------------------------
    # The public methods are made from the operation table (`atomic_operations`) by
    # `_atomic_method`, below the class (the type checkers read the declarations in the
    # TYPE_CHECKING block, whose docstrings are the table's summaries): a fast path (a
    # known lock-free integer type, an exact int in range, an allowed Ordering member,
    # the last region hit being host-backed and writable where needed) and `_atomic`,
    # the general path, for everything else.

    def _atomic(self, operation: AtomicOperation, address: AlignedGuestAddress[Any],
                order: object, operands: tuple[object, ...],
                failure: object = _SEQ_CST) -> Any:
        """Any atomic operation, fully checked in order before memory is touched."""
        if type(address) is not AlignedGuestAddress:  # see _aligned_parts
            raise _not_aligned_address(address, operation.name)
        alignment: AlignmentInfo = address._info
        ctype = alignment.ctype
        value = address._guest_value
        c_order = check_ordering(operation.name, order, operation.orderings,
                                 operation.access)
        c_failure = c_order
        if operation.failure_orderings:
            c_failure = check_ordering(f"{operation.name} failure", failure,
                                       operation.failure_orderings,
                                       "the side of a compare-exchange that finds another "
                                       "value and stores nothing")
        info = atomic_type_info(ctype)
        if info.is_bool and not operation.defined_for_bool:
            raise NotAtomicAccess(info.name, f"{operation.name} is not defined for bool")
        values = tuple(info.check_value(operand) for operand in operands)
        region, offset = self._locate(value, info.size)
        if operation.stores and region.read_only:
            raise ReadOnlyRegion(value, info.size)
        refuse_unsupported_width(info)  # on every kind, where host memory would refuse it
        base = region.host_address
        if base is None:
            result = region.atomic(operation, offset, info, values, c_order, c_failure)
        else:
            atomics = host_atomics(info)
            host = base + offset
            if host & atomics.mask:
                raise MisalignedAddress(host, info.size, info.name, "host")
            result = run_host(operation, info, atomics, host, values, c_order, c_failure)
            if alignment.atomics is None and not info.is_bool \
                    and type(alignment) is AlignmentInfo:
                _prime_fast_atomics(alignment, info.minimum, info.maximum,
                                    atomics.value_type, atomics.functions)
        if operation.stores and region.dirty is not None and \
                (operation is not COMPARE_EXCHANGE or result[0]):
            region.dirty.mark(offset, info.size)
        return result

    if TYPE_CHECKING:
        @overload
        def read_atomic(self, address: AlignedGuestAddress[ctypes.c_bool],
                        order: Ordering = _SEQ_CST) -> bool: ...
        @overload
        def read_atomic(self, address: AlignedGuestAddress[AtomicInteger],
                        order: Ordering = _SEQ_CST) -> int: ...
        def read_atomic(self, address: AlignedGuestAddress[Any],
                        order: Ordering = _SEQ_CST) -> Any:
            """One hardware-atomic load with `order` (RELAXED, ACQUIRE or SEQ_CST)."""
            ...

        @overload
        def write_atomic(self, address: AlignedGuestAddress[ctypes.c_bool], value: bool,
                         order: Ordering = _SEQ_CST) -> None: ...
        @overload
        def write_atomic(self, address: AlignedGuestAddress[AtomicInteger], value: int,
                         order: Ordering = _SEQ_CST) -> None: ...
        def write_atomic(self, address: AlignedGuestAddress[Any], value: int,
                         order: Ordering = _SEQ_CST) -> None:
            """One hardware-atomic store with `order` (RELAXED, RELEASE or SEQ_CST)."""
            ...

        @overload
        def swap(self, address: AlignedGuestAddress[ctypes.c_bool], value: bool,
                 order: Ordering = _SEQ_CST) -> bool: ...
        @overload
        def swap(self, address: AlignedGuestAddress[AtomicInteger], value: int,
                 order: Ordering = _SEQ_CST) -> int: ...
        def swap(self, address: AlignedGuestAddress[Any], value: int,
                 order: Ordering = _SEQ_CST) -> Any:
            """Atomically store `value` and return the previous value."""
            ...

        @overload
        def compare_exchange(self, address: AlignedGuestAddress[ctypes.c_bool],
                             expected: bool, desired: bool, success: Ordering = _SEQ_CST,
                             failure: Ordering = _SEQ_CST) -> tuple[bool, bool]: ...
        @overload
        def compare_exchange(self, address: AlignedGuestAddress[AtomicInteger],
                             expected: int, desired: int, success: Ordering = _SEQ_CST,
                             failure: Ordering = _SEQ_CST) -> tuple[bool, int]: ...
        def compare_exchange(self, address: AlignedGuestAddress[Any], expected: int,
                             desired: int, success: Ordering = _SEQ_CST,
                             failure: Ordering = _SEQ_CST) -> tuple[bool, Any]:
            """Atomically store `desired` if the value is `expected`.

            Returns (whether it was stored, the value found). A read-only region refuses
            even a compare-exchange that would fail: the instruction writes either way.
            """
            ...

        def fetch_add(self, address: AlignedGuestAddress[AtomicInteger], value: int,
                      order: Ordering = _SEQ_CST) -> int:
            """Atomically add `value` (wrapping at the type's width); return the old value."""
            ...

        def fetch_sub(self, address: AlignedGuestAddress[AtomicInteger], value: int,
                      order: Ordering = _SEQ_CST) -> int:
            """Atomically subtract `value` (wrapping); return the old value."""
            ...

        @overload
        def fetch_and(self, address: AlignedGuestAddress[ctypes.c_bool], value: bool,
                      order: Ordering = _SEQ_CST) -> bool: ...
        @overload
        def fetch_and(self, address: AlignedGuestAddress[AtomicInteger], value: int,
                      order: Ordering = _SEQ_CST) -> int: ...
        def fetch_and(self, address: AlignedGuestAddress[Any], value: int,
                      order: Ordering = _SEQ_CST) -> Any:
            """Atomically AND `value` in; return the old value."""
            ...

        @overload
        def fetch_or(self, address: AlignedGuestAddress[ctypes.c_bool], value: bool,
                     order: Ordering = _SEQ_CST) -> bool: ...
        @overload
        def fetch_or(self, address: AlignedGuestAddress[AtomicInteger], value: int,
                     order: Ordering = _SEQ_CST) -> int: ...
        def fetch_or(self, address: AlignedGuestAddress[Any], value: int,
                     order: Ordering = _SEQ_CST) -> Any:
            """Atomically OR `value` in; return the old value."""
            ...

        @overload
        def fetch_xor(self, address: AlignedGuestAddress[ctypes.c_bool], value: bool,
                      order: Ordering = _SEQ_CST) -> bool: ...
        @overload
        def fetch_xor(self, address: AlignedGuestAddress[AtomicInteger], value: int,
                      order: Ordering = _SEQ_CST) -> int: ...
        def fetch_xor(self, address: AlignedGuestAddress[Any], value: int,
                      order: Ordering = _SEQ_CST) -> Any:
            """Atomically XOR `value` in; return the old value."""
            ...

    # ---- Views ---------------------------------------------------------------------

    def get_slice(self, address: GuestAddress, length: int) -> VolatileSlice:
        """A view of `[address, address + length)`, which must lie in one region."""
        length = check_u64(length, "length")
        region, offset = self._locate(self._checked_start(address, length, "get_slice"),
                                      length)
        return VolatileSlice(self, region, offset, length)

    def get_slices(self, address: GuestAddress, length: int) -> list[VolatileSlice]:
        """Views covering `[address, address + length)` across regions, in order.

        Raises `PartialBuffer` (and returns nothing) if a hole or the end cuts the range.
        """
        length = check_u64(length, "length")
        value = self._checked_start(address, length, "get_slices")
        return [VolatileSlice(self, region, offset, count) for region, offset, count
                in self._whole_spans(value, length, writing=False)]

    # ---- Hot-plug: new immutable objects -------------------------------------------

    def insert_region(self, region: GuestMemoryRegion) -> Self:
        """A new memory object with `region` added (`RegionOverlap` if it collides).

        If this memory tracks dirty pages, the new region is tracked too, from the start.
        A refused insert leaves `region` as it was.
        """
        if not is_region(region):
            raise InvalidArgumentType("insert_region's region", "a GuestMemoryRegion (of "
                                      "a class that keeps the fields the access paths "
                                      "trust)", region)
        page_size = self._tracked_page_size()
        started = page_size is not None and region.dirty is None
        if page_size is not None:
            region.track_dirty_pages(page_size)
        try:
            return self._with_inserted(region)
        except BaseException:
            if started:
                region.stop_tracking_dirty_pages()
            raise

    def _tracked_page_size(self) -> int | None:
        """The page size of the first region that tracks dirty pages, if any does (no scan
        at all while no region anywhere tracks)."""
        if not regions_tracking_dirty_pages():
            return None
        regions = (self._nth_region(index) for index in range(self.num_regions()))
        return next((tracked.dirty.page_size for tracked in regions
                     if tracked.dirty is not None), None)

    def remove_region(self, address: GuestAddress,
                      length: int) -> tuple[Self, GuestMemoryRegion]:
        """A new memory object without the region `[address, +length)`, and that region.

        The removed region stays mapped for as long as anything (an old snapshot, a
        view) still refers to it.
        """
        value = _guest_value(address, "remove_region")
        length = check_u64(length, "length")
        index = self._index_at(value)
        if index >= 0:
            region = self._nth_region(index)
            if region.start_value == value and region.length == length:
                if not type(self)._hotplug_skips_init:
                    regions = self._regions
                    return type(self)(regions[:index] + regions[index + 1:]), region
                return self._changed(index, None), region
        raise InvalidRange(value, length, "no region has exactly this range")

    def _with_inserted(self, region: GuestMemoryRegion) -> Self:
        """A new memory object with `region` inserted, checking only what changes: the
        region itself and its two neighbours (the others were checked when this memory
        was made, and a live memory's regions cannot be closed)."""
        if not type(self)._hotplug_skips_init:
            return type(self)((*self._regions, region))
        self._admit(region)
        index = self._index_at(region.start_value) + 1
        if index > 0 and self._nth_region(index - 1).end_value > region.start_value:
            before = self._nth_region(index - 1)
            raise RegionOverlap(before.start_value, before.length, region.start_value,
                                region.length)
        if index < self.num_regions() \
                and region.end_value > self._nth_region(index).start_value:
            after = self._nth_region(index)
            raise RegionOverlap(region.start_value, region.length, after.start_value,
                                after.length)
        with lifetime_lock():  # as in __init__: no close between the check and registration
            if region.closed:
                raise MappingError(region.length, f"{region!r} is closed")
            return self._changed(index, region)

    def _changed(self, index: int, region: GuestMemoryRegion | None) -> Self:
        """A new registered object of this class: this one with `region` inserted at
        `index`, or (region None) without the region at `index`; its lookup derived from
        this one's (call with the lifetime lock held when inserting)."""
        cls = type(self)
        memory = cls.__new__(cls)
        memory._install_changed(self, index, region)
        with lifetime_lock():
            register(memory)
        return memory

    # ---- Dirty-page tracking -------------------------------------------------------

    def track_dirty_pages(self, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        """Mark, from now on, every page written through this library in every region."""
        for region in self._regions:
            region.track_dirty_pages(page_size)

    def dirty_pages(self) -> list[GuestAddress]:
        """The start addresses of the pages marked dirty, without clearing them."""
        return [GuestAddress(region.start_value + page * region.dirty.page_size)
                for region in self._regions if region.dirty is not None
                for page in region.dirty.dirty_pages()]

    def take_dirty_pages(self) -> list[GuestAddress]:
        """The dirty pages' start addresses, clearing exactly the marks returned.

        Safe beside concurrent writers: a page written meanwhile is either returned now
        or stays marked for the next call.
        """
        return [GuestAddress(region.start_value + page * region.dirty.page_size)
                for region in self._regions if region.dirty is not None
                for page in region.dirty.take_dirty_pages()]

    # ---- Zero-copy stream I/O ------------------------------------------------------

    def _io_spans(self, address: GuestAddress, count: int, method: str,
                  *, into_guest: bool) -> list[Span]:
        count = check_u64(count, "count")
        value = self._checked_start(address, count, method)
        spans = self._spans(value, count)
        if count and not spans:
            raise InvalidGuestAddress(value)
        if into_guest:
            _refuse_read_only(spans)
        return spans

    def read_from(self, address: GuestAddress, source: StreamSource, count: int, *,
                  file_offset: int | None = None) -> int:
        """Read up to `count` bytes from `source` straight into guest memory.

        `source` is a file descriptor (`readv`/`preadv` scattering over the regions), a
        socket (`recvmsg_into`) or a binary file object (`readinto`). Like `os.read`, the
        count is what arrived, stopping at a hole or the end of guest memory; 0 at end of
        stream. An error after some bytes arrived returns their count (it will recur on
        the next call); an error before any raises.
        """
        spans = self._io_spans(address, count, "read_from", into_guest=True)
        return _scatter_into(spans, source, _file_offset(file_offset))

    def write_to(self, address: GuestAddress, destination: StreamSink, count: int, *,
                 file_offset: int | None = None) -> int:
        """Write up to `count` bytes of guest memory to `destination`, gathered.

        `destination` is a file descriptor (`writev`/`pwritev`), a socket (`sendmsg`) or
        a binary file object (`write`). Returns the count written (an error after some
        bytes left returns their count; an error before any raises).
        """
        spans = self._io_spans(address, count, "write_to", into_guest=False)
        return _gather_from(spans, destination, _file_offset(file_offset))

    def _ranges_spans(self, ranges: Iterable[tuple[GuestAddress, int]], method: str, *,
                      into_guest: bool) -> list[Span]:
        """The spans of several guest ranges in order; each must be wholly backed (and
        writable `into_guest`), checked before any byte moves."""
        spans: list[Span] = []
        for item in ranges:
            if not isinstance(item, tuple) or len(item) != 2:  # pyright: ignore[reportUnknownArgumentType]
                raise InvalidArgumentType(f"a range of {method}", "(GuestAddress, length)",
                                          item)
            address, length = item
            length = check_u64(length, "length")
            value = self._checked_start(address, length, method)
            spans.extend(self._whole_spans(value, length, writing=into_guest))
        return spans

    def read_vectored_from(self, ranges: Iterable[tuple[GuestAddress, int]],
                           source: StreamSource, *, file_offset: int | None = None) -> int:
        """Read from `source` into several guest ranges in order (a device request's
        scatter list) with one system call per `IOV_MAX` buffers; counts and errors as
        `read_from`. Every range must be wholly backed and writable (else the typed
        error, before any byte moves)."""
        spans = self._ranges_spans(ranges, "read_vectored_from", into_guest=True)
        return _scatter_into(spans, source, _file_offset(file_offset))

    def write_vectored_to(self, ranges: Iterable[tuple[GuestAddress, int]],
                          destination: StreamSink, *, file_offset: int | None = None) -> int:
        """Write several guest ranges in order to `destination` (a gather list) with one
        system call per `IOV_MAX` buffers; counts and errors as `write_to`. Every range
        must be wholly backed (else `PartialBuffer`, before any byte moves)."""
        spans = self._ranges_spans(ranges, "write_vectored_to", into_guest=False)
        return _gather_from(spans, destination, _file_offset(file_offset))

    def read_exact_from(self, address: GuestAddress, source: StreamSource, count: int) -> None:
        """Read exactly `count` bytes into guest memory, or raise `PartialBuffer`.

        Reads only as far as guest memory is backed, so the stream is never consumed
        past what could be stored; the error says how much arrived (`completed`), and
        chains the stream's own error when one stopped it.
        """
        self._exact_io(address, count, "read_exact_from",
                       lambda at, remaining: self.read_from(at, source, remaining))

    def write_all_to(self, address: GuestAddress, destination: StreamSink,
                     count: int) -> None:
        """Write exactly `count` bytes of guest memory, or raise `PartialBuffer`."""
        self._exact_io(address, count, "write_all_to",
                       lambda at, remaining: self.write_to(at, destination, remaining))

    def _exact_io(self, address: GuestAddress, count: int, method: str,
                  step: Callable[[GuestAddress, int], int]) -> None:
        count = check_u64(count, "count")
        start = self._checked_start(address, count, method)
        available = _covered(self._spans(start, count))
        done = 0
        while done < available:
            try:
                moved = step(GuestAddress(start + done), available - done)
            except Exception as error:
                if done == 0:
                    raise
                raise PartialBuffer(start, count, done, available) from error
            if moved == 0:
                break
            done += moved
        if done < count:
            raise PartialBuffer(start, count, done, available)

    def __repr__(self) -> str:
        inner = ", ".join(repr(region) for region in self._regions)
        return f"{type(self).__name__}([{inner}])"


def _covered(spans: list[Span]) -> int:
    return sum(count for _, _, count in spans)


def _refuse_read_only(spans: list[Span]) -> None:
    for region, offset, count in spans:
        if region.read_only:
            raise ReadOnlyRegion(region.start_value + offset, count)


def _prefix(spans: list[Span], done: int) -> Iterator[Span]:
    """The parts of `spans` covering their first `done` bytes."""
    for region, offset, count in spans:
        if done <= 0:
            return
        yield region, offset, min(count, done)
        done -= count


def _unpack(layout: TypeLayout, buffer: Any, offset: int, address: int) -> Any:
    """`layout.unpack_from`, with a guest value that is not a valid one reported at its
    guest address."""
    try:
        return layout.unpack_from(buffer, offset)
    except InvalidGuestValue as error:
        raise InvalidGuestValue(address, error.type_name, error.reason) from None


def _file_offset(file_offset: object) -> int | None:
    return None if file_offset is None else check_u64(file_offset, "file_offset")


def _scatter_into(spans: list[Span], source: StreamSource, file_offset: int | None) -> int:
    """Read from `source` into `spans` (bounce buffers for regions without memory of
    their own), mark what arrived dirty; the count that arrived."""
    views, bounce = _span_views(spans)
    done = scatter_read(source, views, file_offset)
    if bounce:
        _flush_bounce(spans, views, done)
    _mark(_prefix(spans, done))
    return done


def _gather_from(spans: list[Span], destination: StreamSink, file_offset: int | None) -> int:
    """Write `spans` to `destination`; the count written."""
    views, bounce = _span_views(spans)
    if bounce:
        for (region, offset, _), view in zip(spans, views, strict=True):
            if region.buffer is None:
                region.read_into(offset, view)
    return gather_write(destination, views, file_offset)


def _span_views(spans: list[Span]) -> tuple[list[memoryview], bool]:
    """A buffer per span: the region's own memory, or a bounce buffer if it has none."""
    views: list[memoryview] = []
    bounce = False
    for region, offset, count in spans:
        if region.buffer is not None:
            views.append(region.buffer[offset:offset + count])
        else:
            views.append(memoryview(bytearray(count)))
            bounce = True
    return views, bounce


def _flush_bounce(spans: list[Span], views: list[memoryview], done: int) -> None:
    """Copy what arrived in bounce buffers into regions that have no host memory."""
    for (region, offset, count), view in zip(_prefix(spans, done), views, strict=False):
        if region.buffer is None:
            region.write_from(offset, view[:count])


def _prime_fast_atomics(alignment: AlignmentInfo, minimum: int, maximum: int,
                        value_type: type[Any], functions: dict[str, Any]) -> None:
    """Give every operation's fast path its entry for `alignment`'s type (a lock-free
    integer), in the very info object its addresses carry: (function) for a load,
    (function, value type, low, high) for a compare-exchange, else (function, low,
    high), [low, high] the part of the type's range that compares cheapest."""
    low, high = max(minimum, -_COMPACT), min(maximum, _COMPACT)
    entries: list[Any] = []
    for operation in OPERATIONS.values():
        function = functions[operation.host_function]
        if operation.shape == "load":
            entries.append(function)
        elif operation.shape == "compare-exchange":
            entries.append((function, value_type, low, high))
        else:
            entries.append((function, low, high))
    set_fast_atomics(alignment, tuple(entries))
    _PRIMED.append(alignment)


def forget_fast_atomics() -> None:
    """Take every fast-path entry back: the next atomic on each type runs cold (what the
    tests comparing cold and warm calls start from)."""
    while _PRIMED:
        set_fast_atomics(_PRIMED.pop(), None)


# The fast paths below run in two steps. First, one test for the commonest call: the
# last region hit, host-backed and in bounds for the access (for a store: writable and
# tracking no dirty pages, so nothing to mark), exact ints in the part of the type's
# range that compares cheapest, SEQ_CST. Then, for anything else, the full fast path:
# another region (the page table's guess, else a search), a region tracking dirty pages
# (marked after the store), the whole range, any allowed ordering. What neither admits
# goes to `GuestMemory._atomic`, the general path.


def _compare_exchange_method(operation: AtomicOperation, members: tuple[Ordering, ...],
                             failure_members: tuple[Ordering, ...]) -> Callable[..., Any]:
    """`_atomic_method`'s fast path for compare_exchange (two operands, two orderings,
    the expected value boxed for libatomic: ctypes passes the box by reference)."""
    index = _OPERATION_INDEX[operation.name]
    ordering_type = Ordering

    def compare_exchange(self: GuestMemory, address: AlignedGuestAddress[Any],
                         expected: int, desired: int, success: Ordering = _SEQ_CST,
                         failure: Ordering = _SEQ_CST) -> Any:
        if type(address) is not AlignedGuestAddress:  # a look-alike: refused there
            return self._atomic(operation, address, success, (expected, desired),
                                failure)
        try:
            function, value_type, low, high = address._info.atomics[index]
            raw = address._guest_value
        except TypeError:  # not primed (None)
            return self._atomic(operation, address, success, (expected, desired),
                                failure)
        region = self._last
        if region.start_value <= raw < region.atomic_untracked_limit \
                and type(expected) is int and type(desired) is int \
                and low <= expected <= high and low <= desired <= high \
                and success is _SEQ_CST and failure is _SEQ_CST:
            box = value_type(expected)
            if function(raw + region.atomic_delta, box, desired, success, failure):
                return True, expected
            return False, box.value
        if not region.start_value <= raw < region.atomic_write_limit:
            # another region: the last hit on its page (no Python call), else a search
            try:
                region = self._page_hits[raw >> _LOOKUP_SHIFT]
            except KeyError:
                region = _NO_REGION
            if not raw < region.atomic_write_limit:  # a page hit covers its whole page
                region = self._page_region(raw)
                if not region.start_value <= raw < region.atomic_write_limit:
                    return self._atomic(operation, address, success, (expected, desired),
                                        failure)
            self._last = region
        layout = address._info.layout
        if type(expected) is int and type(desired) is int \
                and layout.minimum <= expected <= layout.maximum \
                and layout.minimum <= desired <= layout.maximum \
                and (success is _SEQ_CST or (type(success) is ordering_type
                                             and success in members)) \
                and (failure is _SEQ_CST or (type(failure) is ordering_type
                                             and failure in failure_members)):
            box = value_type(expected)
            if function(raw + region.atomic_delta, box, desired, success, failure):
                if region.dirty is not None:  # aligned: the value never crosses a page
                    region.dirty.mark(raw - region.start_value, 1)
                return True, expected
            return False, box.value
        return self._atomic(operation, address, success, (expected, desired), failure)
    return compare_exchange


def _load_method(operation: AtomicOperation,
                 members: tuple[Ordering, ...]) -> Callable[..., Any]:
    """`_atomic_method`'s fast path for a load (no operand, one ordering)."""
    index = _OPERATION_INDEX[operation.name]
    ordering_type = Ordering

    def load(self: GuestMemory, address: AlignedGuestAddress[Any],
             order: Ordering = _SEQ_CST) -> Any:
        if type(address) is not AlignedGuestAddress:  # a look-alike: refused there
            return self._atomic(operation, address, order, ())
        try:
            function = address._info.atomics[index]
            value = address._guest_value
        except TypeError:  # not primed (None)
            return self._atomic(operation, address, order, ())
        region = self._last
        if not region.start_value <= value < region.atomic_read_limit:
            # another region: the last hit on its page (no Python call), else a search
            try:
                region = self._page_hits[value >> _LOOKUP_SHIFT]
            except KeyError:
                region = _NO_REGION
            if not value < region.atomic_read_limit:  # a page hit covers its whole page
                region = self._page_region(value)
                if not region.start_value <= value < region.atomic_read_limit:
                    return self._atomic(operation, address, order, ())
            self._last = region
        if order is _SEQ_CST or (type(order) is ordering_type and order in members):
            return function(value + region.atomic_delta, order)
        return self._atomic(operation, address, order, ())
    return load


def _atomic_method(operation: AtomicOperation) -> Callable[..., Any]:
    """The public method for `operation`: its fast path, then `GuestMemory._atomic`.

    Everything the fast path admits comes from the operation's table entry and the
    type's entry in its `AlignmentInfo`: the ordering members (by identity), the value
    range (exact ints only), the limit that proves the region host-backed, in bounds,
    host-aligned and writable where the operation stores.
    """
    index = _OPERATION_INDEX[operation.name]
    members = operation.ordering_members
    failure_members = tuple(sorted(operation.failure_orderings))
    assert _SEQ_CST in operation.orderings
    ordering_type = Ordering
    method: Callable[..., Any]

    if operation.shape == "load":
        method = _load_method(operation, members)

    elif operation.shape == "compare-exchange":
        method = _compare_exchange_method(operation, members, failure_members)

    else:
        def store_or_modify(self: GuestMemory, address: AlignedGuestAddress[Any],
                            value: int, order: Ordering = _SEQ_CST) -> Any:
            if type(address) is not AlignedGuestAddress:  # a look-alike: refused there
                return self._atomic(operation, address, order, (value,))
            try:
                function, low, high = address._info.atomics[index]
                raw = address._guest_value
            except TypeError:  # not primed (None)
                return self._atomic(operation, address, order, (value,))
            region = self._last
            if region.start_value <= raw < region.atomic_untracked_limit \
                    and type(value) is int and low <= value <= high \
                    and order is _SEQ_CST:
                return function(raw + region.atomic_delta, value, order)
            if not region.start_value <= raw < region.atomic_write_limit:
                # another region: the last hit on its page (no Python call), else a search
                try:
                    region = self._page_hits[raw >> _LOOKUP_SHIFT]
                except KeyError:
                    region = _NO_REGION
                if not raw < region.atomic_write_limit:  # a page hit covers its whole page
                    region = self._page_region(raw)
                    if not region.start_value <= raw < region.atomic_write_limit:
                        return self._atomic(operation, address, order, (value,))
                self._last = region
            layout = address._info.layout
            if type(value) is int and layout.minimum <= value <= layout.maximum \
                    and (order is _SEQ_CST or (type(order) is ordering_type
                                               and order in members)):
                result = function(raw + region.atomic_delta, value, order)
                if region.dirty is not None:  # aligned: the value never crosses a page
                    region.dirty.mark(raw - region.start_value, 1)
                return result
            return self._atomic(operation, address, order, (value,))
        method = store_or_modify

    method.__name__ = operation.name
    method.__qualname__ = f"GuestMemory.{operation.name}"
    method.__doc__ = operation.summary
    return method


def _atomic_general(operation: AtomicOperation) -> Callable[..., Any]:
    """The general path of `operation` with the public method's signature (what the
    compiled path falls back on)."""
    if operation.shape == "load":
        def load(self: GuestMemory, address: AlignedGuestAddress[Any],
                 order: Ordering = _SEQ_CST) -> Any:
            return self._atomic(operation, address, order, ())
        return load
    if operation.shape == "compare-exchange":
        def compare_exchange(self: GuestMemory, address: AlignedGuestAddress[Any],
                             expected: int, desired: int, success: Ordering = _SEQ_CST,
                             failure: Ordering = _SEQ_CST) -> Any:
            return self._atomic(operation, address, success, (expected, desired), failure)
        return compare_exchange

    def store_or_modify(self: GuestMemory, address: AlignedGuestAddress[Any], value: int,
                        order: Ordering = _SEQ_CST) -> Any:
        return self._atomic(operation, address, order, (value,))
    return store_or_modify


COMPILED_METHODS: Final = (
    *OPERATIONS, "read_obj", "write_obj", "read_obj_unaligned", "write_obj_unaligned",
    "read_slice", "write_slice")
"""The access methods the compiled base runs in C (each falling back on its general
path, `_<name>_general` or the atomic table's)."""
_COMPILED_LOOKUP: Final = ("_install", "_install_changed", "_index_at", "_region_at",
                           "_page_region",
                           "_page_guess", "_nth_region", "num_regions", "_regions")

if compiled is None:
    for _operation in OPERATIONS.values():
        setattr(GuestMemory, _operation.name, _atomic_method(_operation))
else:
    for _operation in OPERATIONS.values():
        compiled.register(_operation.name, _atomic_general(_operation))
    for _name in COMPILED_METHODS[len(OPERATIONS):]:
        compiled.register(_name, getattr(GuestMemory, f"_{_name}_general"))
        delattr(GuestMemory, _name)  # the compiled base's method answers
    for _name in _COMPILED_LOOKUP:
        delattr(GuestMemory, _name)
    compiled.register("no_region", _NO_REGION)
    compiled.register("orderings", tuple(Ordering))
