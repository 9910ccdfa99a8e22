"""GuestMemoryRegion: the few primitives every kind of region provides.

`GuestMemory` builds its whole access interface on these. A region reached through a
host buffer (an mmap) exposes it (`buffer`, `host_address`) and gets plain and atomic
access for free; a region that is not host-backed implements `read_into`/`write_from`
and, if it can, the atomic primitive. The default of that refuses with
`AtomicAccessUnsupported`: never a silent non-atomic access under an atomic name.

Writing a new kind of region — what it must keep true:

- Pass `buffer` (a live, C-contiguous 1-D memoryview of exactly `length` one-byte items;
  the region keeps its own byte view of it, which pins the memory) only if every byte of
  the region is in this process's memory for as long as the region is open: every fast
  path then reads and writes `buffer` directly and never calls `read_into`/`write_from`
  (nor any override of them). Pass `host_address` only with a `buffer` whose first byte
  is at that address: the atomic paths use it as a raw pointer.
- A subclass takes every field below, and attribute lookup (`__getattribute__`), from
  GuestMemoryRegion, directly or through a mixin: the class is refused otherwise.
- `start`, `length`, `read_only`, `buffer`, `host_address` and `dirty` are the inputs of
  the derived fast-path limits (`end_value`, `read_limit`, `write_limit`,
  `atomic_read_limit`, `atomic_write_limit`, `atomic_delta`): they are fixed at
  construction (assigning them raises) and change only through the region's own
  methods (`track_dirty_pages`, a close), which derive the limits again.
- A read-only region's `buffer` is read-only (a writable one is wrapped with
  `toreadonly()`), and a buffer that is read-only makes the region read-only: a store
  must never reach memory the process cannot write (that is a SIGSEGV, not an error).
- Without a `buffer`: override `read_into` and `write_from` (whole ranges; raise a
  `GuestMemoryError` on failure), and `atomic` if the region can make each operation
  indivisible against every other access to its bytes.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, SupportsIndex, TypeGuard

from vm_memory.address import GuestAddress, MemoryRegionAddress
from vm_memory.atomic_access import AtomicTypeInfo
from vm_memory.atomic_operations import AtomicOperation
from vm_memory.bitmap import DEFAULT_PAGE_SIZE, DirtyBitmap
from vm_memory.buffers import buffer_address
from vm_memory.errors import (
    AtomicAccessUnsupported,
    InvalidArgumentType,
    InvalidRange,
    MappingError,
    ReadOnlyRegion,
)
from vm_memory.implementation import compiled

_FIXED: frozenset[str] = frozenset({
    "start", "start_value", "length", "read_only", "buffer", "host_address", "dirty",
    "end_value", "atomic_delta", "read_limit", "write_limit", "atomic_read_limit",
    "atomic_write_limit", "atomic_untracked_limit", "typed_views"})


_NO_TYPED_VIEWS: Mapping[str, memoryview] = MappingProxyType({})
"""The typed views of a region that has made none (shared: read, never written)."""

_TRACKING: weakref.WeakSet[GuestMemoryRegion] = weakref.WeakSet()
"""Every region tracking dirty pages now (hot-plug looks for one only if there is any)."""


def regions_tracking_dirty_pages() -> bool:
    """Whether any region anywhere tracks dirty pages."""
    return bool(_TRACKING)


_U64_MAX = (1 << 64) - 1


def _checked_span(start: object, length: object) -> int:
    """The start value of a region `[start, start + length)`, checked: a `GuestAddress`,
    an int length of at least 1, and no byte past 2**64."""
    if type(start) is not GuestAddress:
        raise InvalidArgumentType("a region's start", "a GuestAddress", start)
    if type(length) is not int:
        raise InvalidArgumentType("a region's length", "an int", length)
    start_value = start.raw_value()
    if length <= 0:
        raise InvalidRange(start_value, length, "a region cannot be empty")
    if start_value + length - 1 > _U64_MAX:
        raise InvalidRange(start_value, length, "the region passes 2**64")
    return start_value


class _PureRegionBase:
    """Where a region keeps its dirty bitmap on the pure path, and how it sets its fields
    (the compiled path keeps the bitmap, with what the C paths need to mark pages, in its
    base type `RegionCore`, whose `_fill` and `_derive` do the same in one call each)."""

    __slots__ = ("atomic_untracked_limit", "dirty")
    dirty: DirtyBitmap | None
    atomic_untracked_limit: int
    """`atomic_write_limit` where the region does not track dirty pages, else -1: an
    atomic store under it needs no page marked (the pure atomic paths' first test)."""

    def _fill(self, start: GuestAddress, start_value: int, length: int, read_only: bool,
              buffer: memoryview | None, host_address: int | None,
              typed_views: Mapping[str, memoryview]) -> None:
        """Set a new region's checked inputs, then `_derive` (no dirty bitmap yet)."""
        fix = object.__setattr__
        fix(self, "start", start)
        fix(self, "start_value", start_value)
        fix(self, "length", length)
        fix(self, "read_only", read_only)
        fix(self, "buffer", buffer)
        fix(self, "host_address", host_address)
        fix(self, "typed_views", typed_views)
        fix(self, "dirty", None)
        self._derive(start_value, length, read_only, buffer, host_address)

    def _derive(self, start_value: int, length: int, read_only: bool,
                buffer: memoryview | None, host_address: int | None) -> None:
        """Set the derived hot-path fields (see `GuestMemoryRegion`) from the inputs."""
        fix = object.__setattr__
        end = start_value + length
        scalar_limit = end - 7
        delta = 0 if host_address is None else host_address - start_value
        # An atomic needs a guest address aligned for it to be aligned on the host too.
        aligned = host_address is not None and delta % 8 == 0
        read_limit = scalar_limit if buffer is not None else -1
        atomic_limit = scalar_limit if aligned else -1
        fix(self, "end_value", end)
        fix(self, "atomic_delta", delta if aligned else 0)
        fix(self, "read_limit", read_limit)
        fix(self, "write_limit", -1 if read_only else read_limit)
        fix(self, "atomic_read_limit", atomic_limit)
        fix(self, "atomic_write_limit", -1 if read_only else atomic_limit)
        fix(self, "atomic_untracked_limit",
            -1 if read_only or self.dirty is not None else atomic_limit)


def _checked_flag(value: object, what: str) -> bool:
    """`value` if it is a real `bool`: read once, so an object whose `__bool__` answers
    differently each time cannot pass one check as read-only and be stored as writable."""
    if type(value) is not bool:
        raise InvalidArgumentType(what, "a bool", value)
    return value


def _own_byte_view(buffer: object, start_value: int, length: int,
                   read_only: bool) -> memoryview:
    """A hand-built region's own 1-D byte view of `buffer` (a live, C-contiguous
    memoryview of exactly `length` bytes), read-only if the region is.

    Its own view, so the region pins the memory itself: the caller releasing the view it
    gave cannot let the memory behind the region's host pointer be unmapped or moved
    (`mmap.close()`, resizing a bytearray)."""
    if type(buffer) is not memoryview:
        raise InvalidArgumentType("a region's buffer", "a memoryview", buffer)
    try:
        shape = (buffer.nbytes, buffer.ndim, buffer.itemsize, buffer.c_contiguous)
    except ValueError:  # released
        raise InvalidArgumentType("a region's buffer", "a memoryview not released",
                                  buffer) from None
    if shape[:3] != (length, 1, 1):
        raise InvalidRange(start_value, length,
                           "the buffer must be a 1-D byte view of the whole region")
    if not shape[3]:
        raise InvalidArgumentType("a region's buffer", "a C-contiguous memoryview", buffer)
    if buffer.readonly and not read_only:
        raise MappingError(length, "the buffer is read-only, so the region must be "
                                   "read-only too")
    view = buffer.cast("B")  # 1-D, contiguous, 1-byte items: always a plain byte view
    return view.toreadonly() if read_only and not view.readonly else view


_TRUSTED_LOOKUPS: tuple[str, ...] = (*sorted(_FIXED), "__getattribute__")
"""What a region class must take from GuestMemoryRegion: the fields the access paths
read, and attribute lookup itself (which could answer for any of them)."""

_SOUND_CLASSES: dict[int, type] = {}
"""Region classes already found to keep every trusted lookup GuestMemoryRegion's, by
`id` (held, so an id is never reused): a set would ask a metaclass's `__hash__` and
`__eq__`, which may lie."""


def _redefined_lookup(cls: type[GuestMemoryRegion]) -> str | None:
    """The first trusted lookup that `cls` takes from a class that is not one of
    GuestMemoryRegion's own (a subclass, or a mixin beside it), or a base's
    `fixed_attributes` name `cls` no longer fixes; None if there is none."""
    library = GuestMemoryRegion.__mro__
    for name in _TRUSTED_LOOKUPS:
        owner = next((klass for klass in cls.__mro__ if name in vars(klass)), None)
        # by identity: `in` would ask a metaclass's `__eq__`, which may lie
        if owner is not None and not any(owner is klass for klass in library):
            return name
    for base in cls.__mro__[1:]:
        if issubclass(base, GuestMemoryRegion) and \
                not base.fixed_attributes <= cls.fixed_attributes:
            return "fixed_attributes"
    return None


def is_region(value: object) -> TypeGuard[GuestMemoryRegion]:
    """Whether `value` is a region by its real type (`isinstance` believes a
    `__class__` property, and the access paths trust a region's fields), of a class
    that takes every field the paths trust from GuestMemoryRegion (checked when the
    class is made; again here, once per class, for a class whose bases skipped
    `__init_subclass__`)."""
    kind = type(value)
    if _SOUND_CLASSES.get(id(kind)) is kind:
        return True
    if not issubclass(kind, GuestMemoryRegion) or _redefined_lookup(kind) is not None:
        return False
    _SOUND_CLASSES[id(kind)] = kind
    return True


# The checkers see the pure base (a conditional expression would hide the class from them).
if TYPE_CHECKING or compiled is None:  # noqa: SIM108
    _RegionBase = _PureRegionBase
else:
    _RegionBase = compiled.RegionCore


class GuestMemoryRegion(_RegionBase):
    """A contiguous range of guest physical memory, `[start, start + length)`.

    Offsets given to the primitives are already checked by `GuestMemory` to lie inside
    the region; `buffer` and `host_address` are plain attributes because every access
    reads them.
    """

    __slots__ = ("__weakref__", "atomic_delta", "atomic_read_limit", "atomic_write_limit",
                 "buffer", "end_value", "host_address", "length", "read_limit",
                 "read_only", "start", "start_value", "typed_views", "write_limit")

    fixed_attributes: ClassVar[frozenset[str]] = _FIXED
    """Attributes that cannot be assigned after construction (subclasses may add)."""

    start: GuestAddress
    start_value: int
    length: int
    read_only: bool
    buffer: memoryview | None
    """A byte view of the whole region when it lives in this process's memory."""
    host_address: int | None
    """The host virtual address of offset 0, or None for a region with no host memory."""
    dirty: DirtyBitmap | None
    """The pages this library has written, when dirty tracking is on."""
    typed_views: Mapping[str, memoryview]
    """`buffer` cast to integer formats, made on first use by `typed_view` (an empty
    shared mapping until then: most regions never need one)."""
    # Derived by `_derive_fast_paths`, for the hot paths of GuestMemory:
    # - `end_value`: one past the last guest address;
    # - `atomic_delta`: host address - guest address, when it is a multiple of 8, so a
    #   guest address aligned for an atomic access is aligned on the host too;
    # - limits: `start_value <= value < limit` proves that a scalar of up to 8 bytes at
    #   `value` can be read (`read_limit`), written (`write_limit`), or accessed
    #   atomically through `value + atomic_delta` (`atomic_read_limit`,
    #   `atomic_write_limit`); -1 where the fast path does not apply at all. A write
    #   that takes a fast path marks `dirty` itself when it is set.
    end_value: int
    atomic_delta: int
    read_limit: int
    write_limit: int
    atomic_read_limit: int
    atomic_write_limit: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a subclass that redefines a field the access paths trust: a property
        there would choose the host pointers the atomic paths use (new fields and
        methods are what a new region kind adds)."""
        super().__init_subclass__(**kwargs)
        name = _redefined_lookup(cls)
        if name == "fixed_attributes":
            raise InvalidArgumentType(f"{cls.__name__}.fixed_attributes", "a superset of "
                                      "its bases' (a subclass may fix more fields, never "
                                      "fewer)", cls.fixed_attributes)
        if name is not None:
            raise InvalidArgumentType(
                f"{cls.__name__}.{name}", "left to GuestMemoryRegion (the access paths "
                "trust it; set it through GuestMemoryRegion.__init__)",
                getattr(cls, name, None))

    def _refuse_second_construction(self) -> None:
        """`__init__` called again would move or remap a region a memory already holds
        (its table keeps the old placement): refused on both paths."""
        if hasattr(self, "start"):
            raise AttributeError(f"{type(self).__name__}.start is fixed at construction: "
                                 "the access paths' checks are derived from it")

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        """Refused: a copy would be a placement its mapping does not know (so the
        mapping's close would not count it), on both paths alike."""
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    def __init__(self, start: GuestAddress, length: int, *, read_only: bool,
                 buffer: memoryview | None = None, host_address: int | None = None) -> None:
        self._refuse_second_construction()
        start_value = _checked_span(start, length)
        read_only = _checked_flag(read_only, "read_only")
        if buffer is not None:
            buffer = _own_byte_view(buffer, start_value, length, read_only)
            # The atomic paths compute host pointers from it: it must be the buffer's own.
            if host_address is not None and (type(host_address) is not int
                                             or host_address != buffer_address(buffer)):
                raise MappingError(length, f"the host address {host_address!r} is not "
                                           "the address of the buffer's first byte")
        elif host_address is not None:
            raise MappingError(length, "a host address needs the buffer behind it")
        self._fill(start, start_value, length, read_only, buffer, host_address,
                   _NO_TYPED_VIEWS)

    def __setattr__(self, name: str, value: object) -> None:
        if name in _FIXED or name in type(self).fixed_attributes:
            raise AttributeError(f"{type(self).__name__}.{name} is fixed at construction: "
                                 "the access paths' checks are derived from it")
        object.__setattr__(self, name, value)

    def typed_view(self, code: str, size: int) -> memoryview | None:
        """The buffer as an array of `code` items (for aligned scalar access), or None
        when the region has no buffer or does not start on a multiple of `size`."""
        view = self.typed_views.get(code)
        if view is None and self.buffer is not None and self.start_value % size == 0:
            usable: Any = self.buffer[:self.length - self.length % size]
            view = usable.cast(code)  # a format known at run time
            # Read-only and fixed: the aligned fast paths index these views directly.
            object.__setattr__(self, "typed_views",
                               MappingProxyType({**self.typed_views, code: view}))
        return view

    def release_typed_views(self) -> None:
        """Drop the typed views (they hold buffer exports, which would stop an unmap).

        They leave the region before they are released, so the hot paths never see a
        released one (they make new ones on demand); `BufferError` if one is exported.
        """
        views = self.typed_views
        object.__setattr__(self, "typed_views", _NO_TYPED_VIEWS)
        for view in views.values():
            view.release()

    def _derive_fast_paths(self) -> None:
        """Recompute the derived hot-path fields (after tracking, a close or a restore)."""
        self._derive(self.start_value, self.length, self.read_only, self.buffer,
                     self.host_address)

    def _detach_memory(self) -> None:
        """Forget the buffer and host address (the memory is gone): every access takes
        the general path, which refuses a closed region."""
        self.release_typed_views()
        object.__setattr__(self, "buffer", None)
        object.__setattr__(self, "host_address", None)
        self._derive_fast_paths()

    def track_dirty_pages(self, page_size: int = DEFAULT_PAGE_SIZE) -> DirtyBitmap:
        """Start marking every page written through this library; returns the bitmap.

        Already tracking with another page size is an error: switching would drop the
        marks not yet taken.
        """
        dirty = self.dirty
        if dirty is None:
            dirty = DirtyBitmap(self.length, page_size)
            object.__setattr__(self, "dirty", dirty)
            self._derive_fast_paths()  # stores now mark pages
            _TRACKING.add(self)
        elif dirty.page_size != page_size:
            raise InvalidRange(self.start_value, self.length,
                               f"already tracking dirty pages of {dirty.page_size} bytes")
        return dirty

    def stop_tracking_dirty_pages(self) -> None:
        """Stop marking written pages (the marks not yet taken are dropped)."""
        object.__setattr__(self, "dirty", None)
        self._derive_fast_paths()
        _TRACKING.discard(self)

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
        if self.buffer is None:
            raise MappingError(self.length, f"{self!r} has no memory to read")
        destination[:] = self.buffer[offset:offset + len(destination)]

    def write_from(self, offset: int, source: memoryview) -> None:
        """Copy `source` into the region at `offset` (never called on read-only regions)."""
        if self.read_only:
            raise ReadOnlyRegion(self.start_value + offset, len(source))
        if self.buffer is None:
            raise MappingError(self.length, f"{self!r} has no memory to write")
        self.buffer[offset:offset + len(source)] = source

    # The atomic primitive, used only when `host_address` is None. The operation's
    # orderings and operands are already validated; the result is what the caller gets.

    def atomic(self, operation: AtomicOperation, offset: int, info: AtomicTypeInfo,
               operands: tuple[int, ...], order: int, failure: int) -> Any:
        """Run `operation` indivisibly on the value described by `info` at `offset`, or refuse."""
        raise AtomicAccessUnsupported(
            self.start_value + offset, self.kind,
            "the region has no host memory and implements no atomic operations")


class NoRegion(GuestMemoryRegion):
    """Matches no address: the empty starting point of a memory object's lookup cache."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(GuestAddress(0), 1, read_only=True)
        object.__setattr__(self, "start_value", 1)
        object.__setattr__(self, "length", 0)  # [1, 1): no address is inside
        self._derive_fast_paths()
