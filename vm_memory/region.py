"""GuestMemoryRegion: the few primitives every kind of region provides.

`GuestMemory` builds its whole access interface on these. A region reached through a
host buffer (an mmap) exposes it (`buffer`, `host_address`) and gets plain and atomic
access for free; a region that is not host-backed implements `read_into`/`write_from`
and, if it can, the atomic primitives. The defaults of those refuse with
`AtomicAccessUnsupported`: never a silent non-atomic access under an atomic name.
"""

from __future__ import annotations

import weakref
from typing import Any

from vm_memory.address import GuestAddress, MemoryRegionAddress
from vm_memory.atomic_access import AtomicKind
from vm_memory.bitmap import DEFAULT_PAGE_SIZE, DirtyBitmap
from vm_memory.errors import AtomicAccessUnsupported, InvalidRange, ReadOnlyRegion


class GuestMemoryRegion:
    """A contiguous range of guest physical memory, `[start, start + length)`.

    Offsets given to the primitives are already checked by `GuestMemory` to lie inside
    the region; `buffer` and `host_address` are plain attributes because every access
    reads them.
    """

    __slots__ = ("__weakref__", "atomic_delta", "atomic_read_limit",
                 "atomic_write_limit", "buffer", "dirty", "end_value", "host_address",
                 "length", "read_limit", "read_only", "start", "start_value",
                 "typed_views", "users", "write_limit")

    buffer: memoryview | None
    """A byte view of the whole region when it lives in this process's memory."""
    host_address: int | None
    """The host virtual address of offset 0, or None for a region with no host memory."""
    dirty: DirtyBitmap | None
    """The pages this library has written, when dirty tracking is on."""
    users: weakref.WeakSet[object]
    """The memory objects holding this region (views hold those): `close` checks it."""
    typed_views: dict[str, memoryview]
    """`buffer` cast to integer formats, made on first use by `typed_view`."""
    # Derived by `_derive_fast_paths`, for the hot paths of GuestMemory:
    # - one past the last guest address;
    # - `atomic_delta`, host address - guest address, when it is a multiple of 8, so a
    #   guest address aligned for an atomic access is aligned on the host too;
    # - limits: `start_value <= value < limit` proves that a scalar of up to 8 bytes at
    #   `value` can be read (`read_limit`), written (`write_limit`), or accessed
    #   atomically through `value + atomic_delta` (`atomic_read_limit`,
    #   `atomic_write_limit`); -1 where the fast path does not apply at all (the write
    #   limits also while dirty tracking is on: the general paths mark the pages).
    end_value: int
    atomic_delta: int
    read_limit: int
    write_limit: int
    atomic_read_limit: int
    atomic_write_limit: int

    def __init__(self, start: GuestAddress, length: int, *, read_only: bool,
                 buffer: memoryview | None = None, host_address: int | None = None) -> None:
        if type(start) is not GuestAddress:
            raise TypeError(f"a region starts at a GuestAddress, not {type(start).__name__}")
        if length <= 0:
            raise InvalidRange(start.raw_value(), length, "a region cannot be empty")
        if start.checked_add(length - 1) is None:
            raise InvalidRange(start.raw_value(), length, "the region passes 2**64")
        self.start = start
        self.start_value = start.raw_value()
        self.length = length
        self.read_only = read_only
        self.buffer = buffer
        self.host_address = host_address
        self.dirty = None
        self.users = weakref.WeakSet()
        self.typed_views = {}
        self._derive_fast_paths()

    def typed_view(self, code: str, size: int) -> memoryview | None:
        """The buffer as an array of `code` items (for aligned scalar access), or None
        when the region has no buffer or does not start on a multiple of `size`."""
        view = self.typed_views.get(code)
        if view is None and self.buffer is not None and self.start_value % size == 0:
            usable: Any = self.buffer[:self.length - self.length % size]
            view = self.typed_views[code] = usable.cast(code)  # a format known at run time
        return view

    def release_typed_views(self) -> None:
        """Drop the typed views (they hold buffer exports, which would stop an unmap)."""
        for view in self.typed_views.values():
            view.release()
        self.typed_views.clear()

    def _derive_fast_paths(self) -> None:
        """Recompute the derived hot-path fields (after construction or a close)."""
        self.end_value = self.start_value + self.length
        host = self.host_address
        delta = None if host is None else host - self.start_value
        aligned = delta is not None and delta % 8 == 0
        self.atomic_delta = delta if delta is not None and aligned else 0
        scalar_limit = self.end_value - 7
        plain_writes = not self.read_only and self.dirty is None  # tracked writes mark
        self.read_limit = scalar_limit if self.buffer is not None else -1
        self.write_limit = self.read_limit if plain_writes else -1
        self.atomic_read_limit = scalar_limit if aligned else -1
        self.atomic_write_limit = self.atomic_read_limit if plain_writes else -1

    def track_dirty_pages(self, page_size: int = DEFAULT_PAGE_SIZE) -> DirtyBitmap:
        """Start marking every page written through this library; returns the bitmap.

        Already tracking with another page size is an error: switching would drop the
        marks not yet taken.
        """
        if self.dirty is None:
            self.dirty = DirtyBitmap(self.length, page_size)
            self._derive_fast_paths()
        elif self.dirty.page_size != page_size:
            raise InvalidRange(self.start_value, self.length,
                               f"already tracking dirty pages of {self.dirty.page_size} bytes")
        return self.dirty

    @property
    def last_addr(self) -> GuestAddress:
        """The last guest address inside the region."""
        return GuestAddress(self.start_value + self.length - 1)

    @property
    def closed(self) -> bool:
        """Whether the region's memory is gone (an explicit close); it can't be used then."""
        return False

    @property
    def kind(self) -> str:
        """A short description of what backs the region, for messages."""
        return type(self).__name__

    def to_region_addr(self, address: GuestAddress) -> MemoryRegionAddress | None:
        """The region offset of a guest address, or None if outside."""
        offset = address.raw_value() - self.start_value
        return MemoryRegionAddress(offset) if 0 <= offset < self.length else None

    def __repr__(self) -> str:
        mode = "ro" if self.read_only else "rw"
        return (f"{type(self).__name__}(start={self.start_value:#x}, "
                f"length={self.length:#x}, {mode})")

    # Copy primitives. The defaults use `buffer`; regions without one override them.

    def read_into(self, offset: int, destination: memoryview) -> None:
        """Copy `len(destination)` bytes from the region at `offset`."""
        assert self.buffer is not None, "a region without a buffer must override read_into"
        destination[:] = self.buffer[offset:offset + len(destination)]

    def write_from(self, offset: int, source: memoryview) -> None:
        """Copy `source` into the region at `offset` (never called on read-only regions)."""
        if self.read_only:
            raise ReadOnlyRegion(self.start_value + offset, len(source))
        assert self.buffer is not None, "a region without a buffer must override write_from"
        self.buffer[offset:offset + len(source)] = source

    # Atomic primitives, used only when `host_address` is None. `order` values are
    # already validated C orderings; `value`s are already range-checked for `kind`.

    def _unsupported(self, offset: int) -> AtomicAccessUnsupported:
        return AtomicAccessUnsupported(
            self.start_value + offset, self.kind,
            "the region has no host memory and implements no atomic operations")

    def atomic_load(self, offset: int, kind: AtomicKind, order: int) -> Any:
        """Atomically load a `kind` value at `offset`."""
        raise self._unsupported(offset)

    def atomic_store(self, offset: int, kind: AtomicKind, value: int, order: int) -> None:
        """Atomically store a `kind` value at `offset`."""
        raise self._unsupported(offset)

    def atomic_exchange(self, offset: int, kind: AtomicKind, value: int, order: int) -> Any:
        """Atomically swap in `value`, returning the old value."""
        raise self._unsupported(offset)

    def atomic_compare_exchange(self, offset: int, kind: AtomicKind, expected: int,
                                desired: int, success: int, failure: int) -> tuple[bool, Any]:
        """Atomically replace `expected` by `desired`; returns (succeeded, value seen)."""
        raise self._unsupported(offset)

    def atomic_fetch(self, operation: str, offset: int, kind: AtomicKind, value: int,
                     order: int) -> Any:
        """Atomically apply `operation` ('add', 'sub', 'and', 'or', 'xor'); return the old."""
        raise self._unsupported(offset)


class NoRegion(GuestMemoryRegion):
    """Matches no address: the empty starting point of a memory object's lookup cache."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(GuestAddress(0), 1, read_only=True)
        self.start_value = 1
        self.length = 0  # [1, 1): no address is inside
        self._derive_fast_paths()
