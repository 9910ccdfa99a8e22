"""GuestMemoryMmap: guest memory whose regions are all host mmaps, with its builders."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

from vm_memory.address import GuestAddress
from vm_memory.guest_memory import GuestMemory
from vm_memory.mmap_region import FileOffset, GuestRegionMmap, MmapRegion


class GuestMemoryMmap(GuestMemory):
    """A `GuestMemory` made only of `GuestRegionMmap`s (every address has a host pointer)."""

    __slots__ = ()

    def __init__(self, regions: Iterable[GuestRegionMmap]) -> None:
        regions = list(regions)
        for region in regions:
            if not isinstance(region, GuestRegionMmap):
                raise TypeError(f"GuestMemoryMmap holds GuestRegionMmap, not {region!r}")
        super().__init__(regions)

    @classmethod
    def from_ranges(cls, ranges: Iterable[tuple[GuestAddress, int]], *,
                    shared: bool = False) -> GuestMemoryMmap:
        """Anonymous memory for each (start, size); `shared` maps it MAP_SHARED."""
        return cls(GuestRegionMmap(MmapRegion.anonymous(size, shared=shared), start)
                   for start, size in ranges)

    @classmethod
    def from_ranges_memfd(cls, ranges: Iterable[tuple[GuestAddress, int]]) -> GuestMemoryMmap:
        """Each (start, size) in its own sealed memfd, ready to share with another process."""
        return cls(GuestRegionMmap(MmapRegion.memfd(size), start) for start, size in ranges)

    @classmethod
    def from_ranges_with_files(
        cls, ranges: Iterable[tuple[GuestAddress, int, FileOffset | None]], *,
        shared: bool = True, read_only: bool = False,
    ) -> GuestMemoryMmap:
        """Each (start, size, file) mapped from `file` (fd and offset), or anonymous if None.

        A file shorter than its range is refused (`MappingPastEof`) before anything is
        mapped for it.
        """
        return cls(
            GuestRegionMmap(
                MmapRegion.anonymous(size, shared=shared) if file is None else
                MmapRegion.from_file(file.fd, size, offset=file.offset, read_only=read_only,
                                     shared=shared),
                start)
            for start, size, file in ranges)

    @classmethod
    def from_regions(cls, regions: Iterable[GuestRegionMmap]) -> GuestMemoryMmap:
        """Memory from regions built by hand (files at offsets, read-only mappings...)."""
        return cls(regions)

    def regions(self) -> Sequence[GuestRegionMmap]:
        """The regions, sorted by start address."""
        return cast("Sequence[GuestRegionMmap]", super().regions())

    def find_region(self, address: GuestAddress) -> GuestRegionMmap | None:
        """The region containing `address`, or None."""
        return cast("GuestRegionMmap | None", super().find_region(address))


