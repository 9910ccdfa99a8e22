"""GuestMemoryMmap: guest memory whose regions are all host mmaps, with its builders."""

from __future__ import annotations

import gc
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Final, cast

from vm_memory.address import GuestAddress
from vm_memory.errors import InvalidArgumentType, MappingError, NoMemoryRegion, RegionInUse
from vm_memory.guest_memory import GuestMemory, sorted_without_overlap
from vm_memory.lifetime import lifetime_lock, register
from vm_memory.mmap_region import (
    CutFields,
    FileOffset,
    GuestRegionMmap,
    MmapRegion,
    cut_anonymous_windows,
    place_windows,
)
from vm_memory.region import is_region


class GuestMemoryMmap(GuestMemory):
    """A `GuestMemory` made only of `GuestRegionMmap`s (every address has a host pointer)."""

    __slots__ = ()
    _hotplug_skips_init = True  # __init__ checks no more than `_admit` does

    def __init__(self, regions: Iterable[GuestRegionMmap]) -> None:
        try:
            regions = list(regions)
        except TypeError:
            raise InvalidArgumentType("regions", "an iterable of GuestRegionMmap",
                                      regions) from None
        super().__init__(regions)

    @classmethod
    def _admit(cls, region: object) -> None:
        if not issubclass(type(region), GuestRegionMmap) or not is_region(region):
            raise InvalidArgumentType("a region of GuestMemoryMmap", "a GuestRegionMmap",
                                      region)

    @classmethod
    def from_ranges(cls, ranges: Iterable[tuple[GuestAddress, int]], *,
                    shared: bool = False, one_mapping: bool = False) -> GuestMemoryMmap:
        """Anonymous memory for each (start, size); `shared` maps it MAP_SHARED.

        Like Rust vm-memory, the memory is mapped without reserving swap (a large sparse
        guest costs only what it touches); no ranges at all is `NoMemoryRegion`.
        Each range is mapped alone (as Rust vm-memory does): each region can be closed,
        and its memory returned, on its own. With `one_mapping=True` the regions are
        windows of one mapping (`MmapRegion.anonymous_windows`): one `mmap` whatever
        their number, so building thousands is cheap and needs no kernel mapping each,
        but they are unmapped together — closing any of them is refused while a memory
        object holds any of them.
        """
        items: list[tuple[GuestAddress, int]] = list(_ranges(ranges))
        if not one_mapping or len(items) < 2:
            return cls._mapped(GuestRegionMmap(MmapRegion.anonymous(size, shared=shared),
                                               start) for start, size in items)
        with _collector_paused():
            windows, fields = cut_anonymous_windows([size for _, size in items],
                                                    shared=shared)
            try:
                return cls._from_windows(windows, [start for start, _ in items], fields)
            except BaseException:
                _unmap_now([windows[0]])  # all of them
                raise

    @classmethod
    def _from_windows(cls, windows: list[MmapRegion], starts: list[GuestAddress],
                      fields: CutFields | None = None) -> GuestMemoryMmap:
        """Memory with each window placed at its start: `from_regions(place_many(...))`,
        with each check the build itself guarantees made once, not once per region (the
        windows are one open batch placed once each, its regions exact GuestRegionMmaps
        this class admits, and makes as GuestMemoryMmap does); the starts, a user's, are
        checked each. `fields`: see `place_windows`."""
        placed = place_windows(windows, starts, fields)
        if placed is None or not cls._hotplug_skips_init \
                or _defined_by(cls, "_admit") is not GuestMemoryMmap \
                or _defined_by(cls, "from_regions") is not GuestMemoryMmap:
            regions = GuestRegionMmap.place_many(zip(windows, starts, strict=True)) \
                if placed is None else placed[0]
            return cls.from_regions(regions)
        regions, ordered = placed
        if not ordered:
            regions = sorted_without_overlap(regions)
        memory = cls.__new__(cls)
        memory._install(tuple(regions))
        with lifetime_lock():  # as in __init__: no close between the check and registration
            if regions[0].closed:  # one batch: all of them
                raise MappingError(regions[0].length, f"{regions[0]!r} is closed")
            register(memory)
        return memory

    @classmethod
    def from_ranges_memfd(cls, ranges: Iterable[tuple[GuestAddress, int]], *,
                          sparse: bool = False) -> GuestMemoryMmap:
        """Each (start, size) in its own sealed memfd, ready to share with another process
        (allocated up front unless `sparse`, see `MmapRegion.memfd`)."""
        return cls._mapped(GuestRegionMmap(MmapRegion.memfd(size, sparse=sparse), start)
                           for start, size in _ranges(ranges))

    @classmethod
    def from_ranges_with_files(
        cls, ranges: Iterable[tuple[GuestAddress, int, FileOffset | None]], *,
        shared: bool = True, read_only: bool = False, sparse: bool = False,
    ) -> GuestMemoryMmap:
        """Each (start, size, file) mapped from `file` (fd and offset), or anonymous if None.

        A file shorter than its range is refused (`MappingPastEof`) before anything is
        mapped for it; see `MmapRegion.from_file` for allocation and `sparse`.
        """
        def mapped(size: int, file: FileOffset | None) -> MmapRegion:
            if file is None:
                return MmapRegion.anonymous(size, shared=shared)
            if not isinstance(file, FileOffset):
                raise InvalidArgumentType("a range's file", "a FileOffset or None", file)
            return MmapRegion.from_file(file.fd, size, offset=file.offset,
                                        read_only=read_only, shared=shared, sparse=sparse)

        return cls._mapped(GuestRegionMmap(mapped(size, file), start)
                           for start, size, file in _ranges(ranges, with_file=True))

    @classmethod
    def from_regions(cls, regions: Iterable[GuestRegionMmap]) -> GuestMemoryMmap:
        """Memory from regions built by hand (files at offsets, read-only mappings...);
        no regions at all is `NoMemoryRegion`. Regions may come in any order."""
        memory = cls(regions)
        if not memory.num_regions():
            raise NoMemoryRegion()
        return memory

    @classmethod
    def _mapped(cls, placed: Iterator[GuestRegionMmap]) -> GuestMemoryMmap:
        """Memory from regions the caller maps as `placed` is iterated: if anything fails,
        the ones already mapped are unmapped at once (their fds closed) rather than left
        to the garbage collector."""
        regions: list[GuestRegionMmap] = []
        try:
            for region in placed:
                regions.append(region)
            return cls.from_regions(regions)
        except BaseException:
            _unmap_now(regions)
            raise

    def regions(self) -> Sequence[GuestRegionMmap]:
        """The regions, sorted by start address."""
        return cast("Sequence[GuestRegionMmap]", super().regions())

    def find_region(self, address: GuestAddress) -> GuestRegionMmap | None:
        """The region containing `address`, or None."""
        return cast("GuestRegionMmap | None", super().find_region(address))




def _unmap_now(mappings: Iterable[MmapRegion | GuestRegionMmap]) -> None:
    """Close each of a failed build's `mappings` now rather than leave them to the
    collector; one the build's memory already holds (an exception raised as it was
    being returned: a signal handler's) is refused and goes with that memory, and the
    refusal must not replace the exception that stopped the build."""
    for mapping in mappings:
        with suppress(RegionInUse):
            mapping.close()


def _defined_by(cls: type[GuestMemory], name: str) -> type:
    """The class whose `name` `cls` uses (a subclass may narrow what `_admit` admits, or
    add to what `from_regions` does)."""
    return next(klass for klass in cls.__mro__ if name in vars(klass))


@contextmanager
def _collector_paused() -> Generator[None, None, None]:
    """No automatic garbage collection meanwhile: a build makes a few objects per region,
    none garbage and none in a cycle, and the collector, triggered every few hundred of
    them, would otherwise go over the growing set again and again (most of a
    100,000-region build's time). They are collected as usual from then on.

    The pause raises the youngest generation's threshold rather than disabling the
    collector, and puts the thresholds back only if they are still the pause's own: a
    `gc.disable()`, `gc.enable()` or `gc.set_threshold()` made meanwhile (by a subclass's
    `__init__`, a signal handler, another thread) stands. Nothing to do when automatic
    collection is off already."""
    before = gc.get_threshold()
    if not gc.isenabled() or before[0] == 0:
        yield
        return
    paused = (_PAUSED_THRESHOLD, *before[1:])
    try:  # set inside: an exception raised as it returns (a signal's) still restores
        gc.set_threshold(*paused)
        yield
    finally:
        if gc.get_threshold() == paused:
            gc.set_threshold(*before)


_PAUSED_THRESHOLD: Final = 1 << 30
"""The youngest generation's threshold during a pause: more allocations than any build
makes between two of its own collections."""


def _ranges(ranges: Iterable[Any], *, with_file: bool = False) -> Iterator[Any]:
    """The (start, size[, file]) tuples of a builder, checked for shape."""
    width = 3 if with_file else 2
    shape = "(GuestAddress, size, FileOffset | None)" if with_file else "(GuestAddress, size)"
    try:
        items = list(ranges)
    except TypeError:
        raise InvalidArgumentType("ranges", f"an iterable of {shape}", ranges) from None
    if set(map(type, items)) <= {tuple} and set(map(len, items)) <= {width}:
        return iter(items)  # every one has the shape: no check (and no call) each
    return _shaped(items, width, shape)


def _shaped(items: list[Any], width: int, shape: str) -> Iterator[Any]:
    """`items`, each checked for shape as it is reached (the ones before a bad one may
    already be mapped: the builders unmap them when the error passes)."""
    for item in cast("list[object]", items):
        if not _is_tuple_of(item, width):
            raise InvalidArgumentType("a range", f"a tuple {shape}", item)
        yield item


def _is_tuple_of(item: object, width: int) -> bool:
    return isinstance(item, tuple) and len(cast("tuple[object, ...]", item)) == width
