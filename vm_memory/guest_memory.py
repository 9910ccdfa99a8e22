"""GuestMemory: the whole access interface, written once over the region primitives.

A `GuestMemory` is an immutable, sorted collection of non-overlapping regions of any
kind; lookups are a binary search. Every method takes the address first. The access
table (see the README):

- `read_atomic`/`write_atomic`/`swap`/`compare_exchange`/`fetch_*`: one hardware atomic
  access on an `AlignedGuestAddress[T]`, T an AtomicAccess type.
- `read_obj`/`write_obj`: any ByteValued T at an aligned address, bounds-checked, not
  atomic.
- `read_obj_unaligned`/`write_obj_unaligned`: any address, may span regions.
- `read`/`write` (partial counts), `read_slice`/`write_slice`/`read_bytes` (all or
  nothing).

The hot paths read the regions' `buffer`/`host_address` attributes and the address
types' value slots directly: every guest access goes through here.
"""
# pyright: reportPrivateUsage=false

from __future__ import annotations

import ctypes
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar, overload

from vm_memory.address import ADDRESS_SPACE_SIZE, GuestAddress, MemoryRegionAddress, check_u64
from vm_memory.aligned_address import AlignedGuestAddress
from vm_memory.atomic_access import AtomicInteger, AtomicKind, atomic_kind
from vm_memory.atomic_backend import HostAtomics, host_atomics
from vm_memory.bitmap import DEFAULT_PAGE_SIZE
from vm_memory.byte_valued import _LAYOUTS, Aggregate, ScalarValue, TypeLayout, layout_of
from vm_memory.errors import (
    InvalidGuestAddress,
    InvalidRange,
    MappingError,
    MisalignedAddress,
    NoHostAddress,
    NotAtomicAccess,
    PartialBuffer,
    ReadOnlyRegion,
    RegionOverlap,
)
from vm_memory.ordering import (
    FAILURE_ORDERINGS,
    LOAD_ORDERING_MEMBERS,
    LOAD_ORDERINGS,
    READ_MODIFY_WRITE_ORDERING_MEMBERS,
    READ_MODIFY_WRITE_ORDERINGS,
    STORE_ORDERING_MEMBERS,
    STORE_ORDERINGS,
    Ordering,
    check_ordering,
)
from vm_memory.region import GuestMemoryRegion, NoRegion
from vm_memory.stream_io import StreamSource, gather_write, scatter_read
from vm_memory.volatile import VolatileSlice

if TYPE_CHECKING:
    from vm_memory.buffers import Buffer, WritableBuffer

_V = TypeVar("_V")
_A = TypeVar("_A", bound=Aggregate)

_SEQ_CST: Final = Ordering.SEQ_CST
_NO_REGION: Final = NoRegion()
_PAGE_SHIFT: Final = 12
_SMALL_REGION_PAGES: Final = 16
"""Regions of at most this many pages go in the page table."""
_HOST_ATOMICS: dict[type[Any], HostAtomics] = {}
# Per operation, by ctype, what its fast path needs and nothing else (a dict lookup and
# a tuple unpack cost less than attribute loads on `HostAtomics`).
_HOST_LOADS: dict[type[Any], Callable[[int, int], Any]] = {}
_HOST_STORES: dict[type[Any], tuple[Callable[[int, Any, int], None], int, int]] = {}
_HOST_FETCH_ADDS: dict[type[Any], tuple[Callable[[int, Any, int], Any], int, int]] = {}
"""HostAtomics by ctype, filled on first use (the hot atomic paths' one lookup)."""


def _not_aligned_address(address: object, method: str) -> TypeError:
    return TypeError(
        f"{method} takes an AlignedGuestAddress[T] (build one with "
        f"AlignedGuestAddress.new(T, address)), not {type(address).__name__}")


def _not_address(address: object, method: str) -> TypeError:
    return TypeError(f"{method} takes a GuestAddress, not {type(address).__name__}")


def _guest_value(address: GuestAddress, method: str) -> int:
    """The int behind a guest address; anything else (an int, a region offset) refused."""
    try:
        return address._guest_value
    except AttributeError:
        raise _not_address(address, method) from None


def _byte_view(buffer: Buffer, writable: bool) -> memoryview:
    view = memoryview(buffer)
    if writable and view.readonly:
        raise TypeError("the destination buffer is read-only")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class GuestMemory:
    """Guest physical memory made of regions; immutable (hot-plug returns new objects)."""

    __slots__ = ("__weakref__", "_last", "_pages", "_regions", "_starts")

    _regions: tuple[GuestMemoryRegion, ...]
    _starts: list[int]
    # Lookup, fastest first: the region the last typed access hit (any region of this
    # memory is a valid guess, so threads may race on it harmlessly); a page table of the
    # small regions, so thousands of them cost one dict probe; a binary search.
    _last: GuestMemoryRegion
    _pages: dict[int, GuestMemoryRegion]

    def __init__(self, regions: Iterable[GuestMemoryRegion]) -> None:
        regions = list(regions)
        for region in regions:
            if not isinstance(region, GuestMemoryRegion):
                raise TypeError(f"{region!r} is not a GuestMemoryRegion")
            if region.closed:
                raise MappingError(region.length, f"{region!r} is closed")
        ordered = sorted(regions, key=lambda region: region.start_value)
        for before, after in pairwise(ordered):
            if before.start_value + before.length > after.start_value:
                raise RegionOverlap(before.start_value, before.length, after.start_value,
                                    after.length)
        self._regions = tuple(ordered)
        self._starts = [region.start_value for region in ordered]
        self._pages = {}
        for region in ordered:
            region.users.add(self)
            first = region.start_value >> _PAGE_SHIFT
            last = (region.end_value - 1) >> _PAGE_SHIFT
            if last - first < _SMALL_REGION_PAGES:
                for page in range(first, last + 1):
                    self._pages.setdefault(page, region)
        self._last = _NO_REGION

    def _region_at(self, value: int) -> GuestMemoryRegion:
        """The region holding `value` (remembered for the next access), or `_NO_REGION`."""
        region = self._pages.get(value >> _PAGE_SHIFT)
        if region is None or not region.start_value <= value < region.end_value:
            index = bisect_right(self._starts, value) - 1
            if index < 0:
                return _NO_REGION
            region = self._regions[index]
            if value >= region.end_value:
                return _NO_REGION
        self._last = region
        return region

    # ---- Layout --------------------------------------------------------------------

    def regions(self) -> Sequence[GuestMemoryRegion]:
        """The regions, sorted by start address."""
        return self._regions

    def num_regions(self) -> int:
        """How many regions there are."""
        return len(self._regions)

    def __iter__(self) -> Iterator[GuestMemoryRegion]:
        return iter(self._regions)

    def find_region(self, address: GuestAddress) -> GuestMemoryRegion | None:
        """The region containing `address`, or None."""
        value = _guest_value(address, "find_region")
        index = bisect_right(self._starts, value) - 1
        if index >= 0:
            region = self._regions[index]
            if value - region.start_value < region.length:
                return region
        return None

    def last_addr(self) -> GuestAddress:
        """The highest guest address backed by a region; raises if there are none."""
        if not self._regions:
            raise InvalidGuestAddress(0)
        return self._regions[-1].last_addr

    def address_in_range(self, address: GuestAddress) -> bool:
        """Whether a region contains `address`."""
        return self.find_region(address) is not None

    def check_address(self, address: GuestAddress) -> GuestAddress | None:
        """`address` if a region contains it, else None."""
        return address if self.find_region(address) is not None else None

    def check_range(self, address: GuestAddress, length: int) -> bool:
        """Whether all of `[address, address + length)` is backed, holes and all."""
        length = check_u64(length, "length")
        return self._covered(_guest_value(address, "check_range"), length) == length

    def to_region_addr(
        self, address: GuestAddress
    ) -> tuple[GuestMemoryRegion, MemoryRegionAddress] | None:
        """The region containing `address` and the offset inside it, or None."""
        region = self.find_region(address)
        if region is None:
            return None
        return region, MemoryRegionAddress(address._guest_value - region.start_value)

    def get_host_address(self, address: GuestAddress) -> int:
        """The host virtual address behind `address`, for passing to KVM or a device."""
        region = self.find_region(address)
        if region is None:
            raise InvalidGuestAddress(address._guest_value)
        if region.host_address is None:
            raise NoHostAddress(address._guest_value, region.kind)
        return region.host_address + address._guest_value - region.start_value

    def _locate(self, value: int, size: int) -> tuple[GuestMemoryRegion, int]:
        """The region holding all of `[value, value + size)` and the offset, or raise."""
        region = self._region_at(value)
        if region is _NO_REGION:
            raise InvalidGuestAddress(value)
        offset = value - region.start_value
        if offset + size > region.length:
            raise InvalidRange(value, size, f"the access crosses the end of {region!r}")
        return region, offset

    def _spans(self, value: int, length: int) -> list[tuple[GuestMemoryRegion, int, int]]:
        """(region, offset, count) pieces covering `[value, value + length)` up to a hole."""
        spans: list[tuple[GuestMemoryRegion, int, int]] = []
        index = bisect_right(self._starts, value) - 1
        regions = self._regions
        remaining = length
        while remaining > 0 and 0 <= index < len(regions):
            region = regions[index]
            offset = value - region.start_value
            if offset < 0 or offset >= region.length:
                break
            count = min(remaining, region.length - offset)
            spans.append((region, offset, count))
            remaining -= count
            value += count
            index += 1
        return spans

    def _covered(self, value: int, length: int) -> int:
        return sum(count for _, _, count in self._spans(value, length))

    # ---- Bulk copies ---------------------------------------------------------------

    def _read_spans(self, spans: list[tuple[GuestMemoryRegion, int, int]],
                    destination: memoryview) -> int:
        done = 0
        for region, offset, count in spans:
            target = destination[done:done + count]
            source = region.buffer
            if source is not None:
                target[:] = source[offset:offset + count]
            else:
                region.read_into(offset, target)
            done += count
        return done

    def _write_spans(self, address: int, spans: list[tuple[GuestMemoryRegion, int, int]],
                     source: memoryview) -> int:
        for region, offset, count in spans:
            if region.read_only:
                raise ReadOnlyRegion(region.start_value + offset, count)
        done = 0
        for region, offset, count in spans:
            piece = source[done:done + count]
            target = region.buffer
            if target is not None:
                target[offset:offset + count] = piece
            else:
                region.write_from(offset, piece)
            if region.dirty is not None:
                region.dirty.mark(offset, count)
            done += count
        return done

    def _checked_start(self, address: GuestAddress, length: int, method: str) -> int:
        try:
            value: int = address._guest_value
        except AttributeError:
            raise _not_address(address, method) from None
        if value + length > ADDRESS_SPACE_SIZE:
            raise InvalidRange(value, length, "the range passes 2**64")
        return value

    def read(self, address: GuestAddress, buffer: WritableBuffer) -> int:
        """Copy guest memory into `buffer`, stopping at a hole; returns the bytes copied.

        Raises `InvalidGuestAddress` if nothing at `address` is backed (and `buffer`
        is not empty).
        """
        destination = _byte_view(buffer, writable=True)
        length = len(destination)
        value = self._checked_start(address, length, "read")
        if length == 0:
            return 0
        spans = self._spans(value, length)
        if not spans:
            raise InvalidGuestAddress(value)
        return self._read_spans(spans, destination)

    def write(self, address: GuestAddress, data: Buffer) -> int:
        """Copy `data` into guest memory, stopping at a hole; returns the bytes copied.

        A read-only region anywhere in the reachable span refuses the whole write.
        """
        source = _byte_view(data, writable=False)
        length = len(source)
        value = self._checked_start(address, length, "write")
        if length == 0:
            return 0
        spans = self._spans(value, length)
        if not spans:
            raise InvalidGuestAddress(value)
        return self._write_spans(value, spans, source)

    def read_slice(self, address: GuestAddress, buffer: WritableBuffer) -> None:
        """Fill `buffer` from guest memory, or raise `PartialBuffer` having copied nothing."""
        destination = _byte_view(buffer, writable=True)
        length = len(destination)
        value = self._checked_start(address, length, "read_slice")
        index = bisect_right(self._starts, value) - 1
        if index >= 0:  # fast path: one region with a buffer
            region = self._regions[index]
            offset = value - region.start_value
            source = region.buffer
            if source is not None and offset + length <= region.length:
                destination[:] = source[offset:offset + length]
                return
        spans = self._spans(value, length)
        covered = sum(count for _, _, count in spans)
        if covered < length:
            raise PartialBuffer(value, length, 0, covered)
        self._read_spans(spans, destination)

    def write_slice(self, address: GuestAddress, data: Buffer) -> None:
        """Copy all of `data` into guest memory, or raise having written nothing."""
        source = _byte_view(data, writable=False)
        length = len(source)
        value = self._checked_start(address, length, "write_slice")
        index = bisect_right(self._starts, value) - 1
        if index >= 0:  # fast path: one writable region with a buffer
            region = self._regions[index]
            offset = value - region.start_value
            target = region.buffer
            if target is not None and offset + length <= region.length \
                    and not region.read_only:
                target[offset:offset + length] = source
                if region.dirty is not None:
                    region.dirty.mark(offset, length)
                return
        spans = self._spans(value, length)
        covered = sum(count for _, _, count in spans)
        if covered < length:
            raise PartialBuffer(value, length, 0, covered)
        self._write_spans(value, spans, source)

    def read_bytes(self, address: GuestAddress, length: int) -> bytes:
        """`length` bytes from guest memory, or raise `PartialBuffer`."""
        length = check_u64(length, "length")
        self._checked_start(address, length, "read_bytes")
        buffer = bytearray(length)
        self.read_slice(address, buffer)
        return bytes(buffer)

    # ---- Typed, not atomic ---------------------------------------------------------
    # Fast paths: one region with a buffer, a struct-coded scalar. Everything else, and
    # every error, goes through the general path below each. The fast paths are written
    # out in each method on purpose: a shared helper would cost a Python call (about
    # 60 ns), a third of the whole operation.

    @overload
    def read_obj_unaligned(self, address: GuestAddress, ctype: type[_A]) -> _A: ...
    @overload
    def read_obj_unaligned(self, address: GuestAddress,
                           ctype: type[ScalarValue[_V]]) -> _V: ...
    def read_obj_unaligned(self, address: GuestAddress, ctype: type[Any]) -> Any:
        """A value of ByteValued `ctype` at any address, possibly across regions."""
        try:
            layout = _LAYOUTS[ctype]
            value = address._guest_value
        except (KeyError, TypeError, AttributeError):
            layout = layout_of(ctype)
            value = self._checked_start(address, layout.size, "read_obj_unaligned")
        region = self._last
        unpack = layout.struct_unpack
        if region.start_value <= value < region.read_limit and unpack is not None:
            return unpack(region.buffer, value - region.start_value)[0]
        # Another region: the page table's guess first (no Python call), else a search.
        region = self._pages.get(value >> _PAGE_SHIFT) or self._region_at(value)
        if region.start_value <= value < region.read_limit and unpack is not None:
            self._last = region
            return unpack(region.buffer, value - region.start_value)[0]
        region = self._region_at(value)
        buffer = region.buffer
        if buffer is not None and value + layout.size <= region.end_value:
            return layout.unpack_from(buffer, value - region.start_value)
        scratch = bytearray(layout.size)
        self.read_slice(address, scratch)
        return layout.unpack_from(scratch, 0)

    @overload
    def write_obj_unaligned(self, address: GuestAddress, ctype: type[_A], value: _A) -> None:
        ...
    @overload
    def write_obj_unaligned(self, address: GuestAddress, ctype: type[ScalarValue[_V]],
                            value: _V) -> None: ...
    def write_obj_unaligned(self, address: GuestAddress, ctype: type[Any], value: Any) -> None:
        """Store `value` as ByteValued `ctype` at any address, possibly across regions."""
        try:
            layout = _LAYOUTS[ctype]
            raw = address._guest_value
        except (KeyError, TypeError, AttributeError):
            layout = layout_of(ctype)
            raw = self._checked_start(address, layout.size, "write_obj_unaligned")
        region = self._last
        pack = layout.struct_pack
        if region.start_value <= raw < region.write_limit and pack is not None \
                and value.__class__ is int and layout.minimum <= value <= layout.maximum:
            pack(region.buffer, raw - region.start_value, value)  # checked: cannot fail
            return
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
        try:
            layout: TypeLayout = address._layout
            value = address._guest_value
        except AttributeError:
            raise _not_aligned_address(address, "read_obj") from None
        region = self._last
        if region.start_value <= value < region.read_limit:
            try:  # the typed view: one subscript, for an aligned native integer
                return region.typed_views[layout.native_code][  # type: ignore[index]
                    (value - region.start_value) >> layout.shift]
            except KeyError:
                unpack = layout.struct_unpack
                if unpack is not None:
                    if layout.native_code is not None:
                        region.typed_view(layout.native_code, layout.size)
                    return unpack(region.buffer, value - region.start_value)[0]
        region = self._region_at(value)
        buffer = region.buffer
        if buffer is not None and value + layout.size <= region.end_value:
            return layout.unpack_from(buffer, value - region.start_value)
        region, offset = self._locate(value, layout.size)
        scratch = bytearray(layout.size)
        region.read_into(offset, memoryview(scratch))
        return layout.unpack_from(scratch, 0)

    @overload
    def write_obj(self, address: AlignedGuestAddress[_A], value: _A) -> None: ...
    @overload
    def write_obj(self, address: AlignedGuestAddress[ScalarValue[_V]], value: _V) -> None: ...
    def write_obj(self, address: AlignedGuestAddress[Any], value: Any) -> None:
        """Store at an aligned address: bounds-checked, not guaranteed atomic."""
        try:
            layout: TypeLayout = address._layout
            raw = address._guest_value
        except AttributeError:
            raise _not_aligned_address(address, "write_obj") from None
        region = self._last
        if region.start_value <= raw < region.write_limit:
            try:  # the typed view checks the value, then stores it, in one subscript
                region.typed_views[layout.native_code][  # type: ignore[index]
                    (raw - region.start_value) >> layout.shift] = value
                return
            except KeyError:
                pack = layout.struct_pack
                if pack is not None and value.__class__ is int \
                        and layout.minimum <= value <= layout.maximum:
                    if layout.native_code is not None:
                        region.typed_view(layout.native_code, layout.size)
                    pack(region.buffer, raw - region.start_value, value)  # cannot fail
                    return
            except (TypeError, ValueError):
                pass  # the general path raises the typed error
        region, offset = self._locate(raw, layout.size)
        if region.read_only:
            raise ReadOnlyRegion(raw, layout.size)
        scratch = bytearray(layout.size)
        layout.pack_into(scratch, 0, value)
        if region.buffer is not None:
            region.buffer[offset:offset + layout.size] = scratch
        else:
            region.write_from(offset, memoryview(scratch))
        if region.dirty is not None:
            region.dirty.mark(offset, layout.size)

    # ---- Atomic --------------------------------------------------------------------
    # Fast paths: a known AtomicAccess type, an allowed ordering, a host-backed region.
    # They fall back to `_atomic` for everything else, which checks everything in
    # order and raises the typed error, before any memory is touched.

    def _atomic(self, operation: str, address: AlignedGuestAddress[Any], order: Ordering,
                *operands: Any) -> Any:
        """Any atomic operation, fully checked. `operands` are the values it stores."""
        try:
            ctype = address._type
        except AttributeError:
            raise _not_aligned_address(address, operation) from None
        if operation == "read_atomic":
            check_ordering(operation, order, LOAD_ORDERINGS)
        elif operation == "write_atomic":
            check_ordering(operation, order, STORE_ORDERINGS)
        elif operation == "compare_exchange":
            check_ordering("compare_exchange success", order, READ_MODIFY_WRITE_ORDERINGS)
            check_ordering("compare_exchange failure", operands[2], FAILURE_ORDERINGS)
        else:
            check_ordering(operation, order, READ_MODIFY_WRITE_ORDERINGS)
        kind = atomic_kind(ctype)
        fetch = operation[6:] if operation.startswith("fetch_") else ""
        if kind.is_bool and fetch in ("add", "sub"):
            raise NotAtomicAccess(kind.name, f"{operation} is not defined for bool")
        values = [kind.check_value(operand) for operand in operands[:2]]
        value = address._guest_value
        region, offset = self._locate(value, kind.size)
        stores = operation != "read_atomic"
        if stores and region.read_only:
            raise ReadOnlyRegion(value, kind.size)
        c_order = int(order)
        base = region.host_address
        if base is None:
            result = self._region_atomic(region, operation, fetch, offset, kind, c_order,
                                         values, operands)
        else:
            functions = _HOST_ATOMICS.get(ctype)
            if functions is None:
                functions = _HOST_ATOMICS[ctype] = host_atomics(kind)
                _HOST_LOADS[ctype] = functions.load
                _HOST_STORES[ctype] = (functions.store, kind.minimum, kind.maximum)
                if functions.fetch_add is not None:
                    _HOST_FETCH_ADDS[ctype] = (functions.fetch_add, kind.minimum,
                                               kind.maximum)
            host = base + offset
            if host & functions.mask:
                raise MisalignedAddress(host, kind.size, kind.name, "host")
            result = _host_atomic(functions, operation, fetch, host, c_order, values,
                                  operands)
        if stores and region.dirty is not None and \
                (operation != "compare_exchange" or result[0]):
            region.dirty.mark(offset, kind.size)
        return result

    @staticmethod
    def _region_atomic(region: GuestMemoryRegion, operation: str, fetch: str, offset: int,
                       kind: AtomicKind, order: int, values: list[int],
                       operands: tuple[Any, ...]) -> Any:
        if operation == "read_atomic":
            return region.atomic_load(offset, kind, order)
        if operation == "write_atomic":
            region.atomic_store(offset, kind, values[0], order)
            return None
        if operation == "swap":
            return region.atomic_exchange(offset, kind, values[0], order)
        if operation == "compare_exchange":
            return region.atomic_compare_exchange(offset, kind, values[0], values[1], order,
                                                  int(operands[2]))
        return region.atomic_fetch(fetch, offset, kind, values[0], order)

    @overload
    def read_atomic(self, address: AlignedGuestAddress[ctypes.c_bool],
                    order: Ordering = _SEQ_CST) -> bool: ...
    @overload
    def read_atomic(self, address: AlignedGuestAddress[AtomicInteger],
                    order: Ordering = _SEQ_CST) -> int: ...
    def read_atomic(self, address: AlignedGuestAddress[Any], order: Ordering = _SEQ_CST) -> Any:
        """One hardware-atomic load with `order` (RELAXED, ACQUIRE or SEQ_CST)."""
        try:
            load = _HOST_LOADS[address._type]
            value = address._guest_value
        except (KeyError, AttributeError):
            return self._atomic("read_atomic", address, order)
        region = self._last
        if region.start_value <= value < region.atomic_read_limit \
                and (order is _SEQ_CST or order in LOAD_ORDERING_MEMBERS):
            return load(value + region.atomic_delta, order)
        return self._atomic("read_atomic", address, order)

    @overload
    def write_atomic(self, address: AlignedGuestAddress[ctypes.c_bool], value: bool,
                     order: Ordering = _SEQ_CST) -> None: ...
    @overload
    def write_atomic(self, address: AlignedGuestAddress[AtomicInteger], value: int,
                     order: Ordering = _SEQ_CST) -> None: ...
    def write_atomic(self, address: AlignedGuestAddress[Any], value: int,
                     order: Ordering = _SEQ_CST) -> None:
        """One hardware-atomic store with `order` (RELAXED, RELEASE or SEQ_CST)."""
        try:
            store, minimum, maximum = _HOST_STORES[address._type]
            raw = address._guest_value
            region = self._last
            if region.start_value <= raw < region.atomic_write_limit \
                    and minimum <= value <= maximum \
                    and (order is _SEQ_CST or order in STORE_ORDERING_MEMBERS):
                # ctypes refuses a non-int before the call: nothing is stored then.
                store(raw + region.atomic_delta, value, order)
                return
            dirty = region.dirty
            if dirty is not None and region.start_value <= raw < region.atomic_read_limit \
                    and not region.read_only and minimum <= value <= maximum \
                    and (order is _SEQ_CST or order in STORE_ORDERING_MEMBERS):
                store(raw + region.atomic_delta, value, order)
                dirty.mark(raw - region.start_value, 1)  # aligned: never crosses a page
                return
        except (KeyError, AttributeError, TypeError, ctypes.ArgumentError):
            pass  # the general path raises the typed error
        self._atomic("write_atomic", address, order, value)

    @overload
    def swap(self, address: AlignedGuestAddress[ctypes.c_bool], value: bool,
             order: Ordering = _SEQ_CST) -> bool: ...
    @overload
    def swap(self, address: AlignedGuestAddress[AtomicInteger], value: int,
             order: Ordering = _SEQ_CST) -> int: ...
    def swap(self, address: AlignedGuestAddress[Any], value: int,
             order: Ordering = _SEQ_CST) -> Any:
        """Atomically store `value` and return the previous value."""
        return self._atomic("swap", address, order, value)

    @overload
    def compare_exchange(self, address: AlignedGuestAddress[ctypes.c_bool], expected: bool,
                         desired: bool, success: Ordering = _SEQ_CST,
                         failure: Ordering = _SEQ_CST) -> tuple[bool, bool]: ...
    @overload
    def compare_exchange(self, address: AlignedGuestAddress[AtomicInteger], expected: int,
                         desired: int, success: Ordering = _SEQ_CST,
                         failure: Ordering = _SEQ_CST) -> tuple[bool, int]: ...
    def compare_exchange(self, address: AlignedGuestAddress[Any], expected: int, desired: int,
                         success: Ordering = _SEQ_CST,
                         failure: Ordering = _SEQ_CST) -> tuple[bool, Any]:
        """Atomically store `desired` if the value is `expected`.

        Returns (whether it was stored, the value found). A read-only region refuses
        even a compare-exchange that would fail: the instruction writes either way.
        """
        return self._atomic(  # type: ignore[no-any-return]
            "compare_exchange", address, success, expected, desired, failure)

    def fetch_add(self, address: AlignedGuestAddress[AtomicInteger], value: int,
                  order: Ordering = _SEQ_CST) -> int:
        """Atomically add `value` (wrapping at the type's width); return the old value."""
        try:
            fetch_add, minimum, maximum = _HOST_FETCH_ADDS[address._type]
            raw = address._guest_value
            region = self._last
            if region.start_value <= raw < region.atomic_write_limit \
                    and minimum <= value <= maximum \
                    and (order is _SEQ_CST or order in READ_MODIFY_WRITE_ORDERING_MEMBERS):
                # ctypes refuses a non-int before the call: nothing is changed then.
                old: int = fetch_add(raw + region.atomic_delta, value, order)
                return old
            dirty = region.dirty
            if dirty is not None and region.start_value <= raw < region.atomic_read_limit \
                    and not region.read_only and minimum <= value <= maximum \
                    and (order is _SEQ_CST or order in READ_MODIFY_WRITE_ORDERING_MEMBERS):
                old = fetch_add(raw + region.atomic_delta, value, order)
                dirty.mark(raw - region.start_value, 1)  # aligned: never crosses a page
                return old
        except (KeyError, AttributeError, TypeError, ctypes.ArgumentError):
            pass  # the general path raises the typed error
        return self._atomic("fetch_add", address, order, value)  # type: ignore[no-any-return]

    def fetch_sub(self, address: AlignedGuestAddress[AtomicInteger], value: int,
                  order: Ordering = _SEQ_CST) -> int:
        """Atomically subtract `value` (wrapping); return the old value."""
        return self._atomic("fetch_sub", address, order, value)  # type: ignore[no-any-return]

    @overload
    def fetch_and(self, address: AlignedGuestAddress[ctypes.c_bool], value: bool,
                  order: Ordering = _SEQ_CST) -> bool: ...
    @overload
    def fetch_and(self, address: AlignedGuestAddress[AtomicInteger], value: int,
                  order: Ordering = _SEQ_CST) -> int: ...
    def fetch_and(self, address: AlignedGuestAddress[Any], value: int,
                  order: Ordering = _SEQ_CST) -> Any:
        """Atomically AND `value` in; return the old value."""
        return self._atomic("fetch_and", address, order, value)

    @overload
    def fetch_or(self, address: AlignedGuestAddress[ctypes.c_bool], value: bool,
                 order: Ordering = _SEQ_CST) -> bool: ...
    @overload
    def fetch_or(self, address: AlignedGuestAddress[AtomicInteger], value: int,
                 order: Ordering = _SEQ_CST) -> int: ...
    def fetch_or(self, address: AlignedGuestAddress[Any], value: int,
                 order: Ordering = _SEQ_CST) -> Any:
        """Atomically OR `value` in; return the old value."""
        return self._atomic("fetch_or", address, order, value)

    @overload
    def fetch_xor(self, address: AlignedGuestAddress[ctypes.c_bool], value: bool,
                  order: Ordering = _SEQ_CST) -> bool: ...
    @overload
    def fetch_xor(self, address: AlignedGuestAddress[AtomicInteger], value: int,
                  order: Ordering = _SEQ_CST) -> int: ...
    def fetch_xor(self, address: AlignedGuestAddress[Any], value: int,
                  order: Ordering = _SEQ_CST) -> Any:
        """Atomically XOR `value` in; return the old value."""
        return self._atomic("fetch_xor", address, order, value)

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
        spans = self._spans(value, length)
        covered = sum(count for _, _, count in spans)
        if covered < length:
            raise PartialBuffer(value, length, 0, covered)
        return [VolatileSlice(self, region, offset, count) for region, offset, count in spans]

    # ---- Hot-plug: new immutable objects -------------------------------------------

    def insert_region(self, region: GuestMemoryRegion) -> Self:
        """A new memory object with `region` added (`RegionOverlap` if it collides).

        If this memory tracks dirty pages, the new region is tracked too, from the start.
        """
        for tracked in self._regions:
            if tracked.dirty is not None:
                region.track_dirty_pages(tracked.dirty.page_size)
                break
        return self._with_regions((*self._regions, region))

    def remove_region(self, address: GuestAddress,
                      length: int) -> tuple[Self, GuestMemoryRegion]:
        """A new memory object without the region `[address, +length)`, and that region.

        The removed region stays mapped for as long as anything (an old snapshot, a
        view) still refers to it.
        """
        for region in self._regions:
            if region.start == address and region.length == length:
                remaining = tuple(other for other in self._regions if other is not region)
                return self._with_regions(remaining), region
        raise InvalidRange(address.raw_value(), length, "no region has exactly this range")

    def _with_regions(self, regions: tuple[GuestMemoryRegion, ...]) -> Self:
        return type(self)(regions)

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
                  *, into_guest: bool) -> list[tuple[GuestMemoryRegion, int, int]]:
        count = check_u64(count, "count")
        value = self._checked_start(address, count, method)
        spans = self._spans(value, count)
        if count and not spans:
            raise InvalidGuestAddress(value)
        if into_guest:
            for region, offset, length in spans:
                if region.read_only:
                    raise ReadOnlyRegion(region.start_value + offset, length)
        return spans

    def read_from(self, address: GuestAddress, source: StreamSource, count: int, *,
                  file_offset: int | None = None) -> int:
        """Read up to `count` bytes from `source` straight into guest memory.

        `source` is a file descriptor (one `readv`/`preadv` scattering over the
        regions), a socket (`recvmsg_into`) or a binary file object (`readinto`). One
        call, like `os.read`: the count is what arrived, stopping at a hole or the end of
        guest memory; 0 at end of stream.
        """
        spans = self._io_spans(address, count, "read_from", into_guest=True)
        views, bounce = _span_views(spans)
        done = scatter_read(source, views, file_offset)
        if bounce:
            _flush_bounce(spans, views, done)
        _mark_written(spans, done)
        return done

    def write_to(self, address: GuestAddress, destination: StreamSource, count: int, *,
                 file_offset: int | None = None) -> int:
        """Write up to `count` bytes of guest memory to `destination` in one gathered call.

        `destination` is a file descriptor (`writev`/`pwritev`), a socket (`sendmsg`) or
        a binary file object (`write`). Returns the count written.
        """
        spans = self._io_spans(address, count, "write_to", into_guest=False)
        views, bounce = _span_views(spans)
        if bounce:
            for (region, offset, _), view in zip(spans, views, strict=True):
                if region.buffer is None:
                    region.read_into(offset, view)
        return gather_write(destination, views, file_offset)

    def read_exact_from(self, address: GuestAddress, source: StreamSource, count: int) -> None:
        """Read exactly `count` bytes into guest memory, or raise `PartialBuffer`.

        Reads only as far as guest memory is backed, so the stream is never consumed
        past what could be stored; the error says how much arrived (`completed`).
        """
        self._exact_io(address, count, "read_exact_from",
                       lambda at, remaining: self.read_from(at, source, remaining))

    def write_all_to(self, address: GuestAddress, destination: StreamSource,
                     count: int) -> None:
        """Write exactly `count` bytes of guest memory, or raise `PartialBuffer`."""
        self._exact_io(address, count, "write_all_to",
                       lambda at, remaining: self.write_to(at, destination, remaining))

    def _exact_io(self, address: GuestAddress, count: int, method: str,
                  step: Callable[[GuestAddress, int], int]) -> None:
        count = check_u64(count, "count")
        start = self._checked_start(address, count, method)
        available = self._covered(start, count)
        done = 0
        while done < available:
            moved = step(GuestAddress(start + done), available - done)
            if moved == 0:
                break
            done += moved
        if done < count:
            raise PartialBuffer(start, count, done, available)

    def __repr__(self) -> str:
        inner = ", ".join(repr(region) for region in self._regions)
        return f"{type(self).__name__}([{inner}])"



def _span_views(spans: list[tuple[GuestMemoryRegion, int, int]]) -> tuple[list[memoryview],
                                                                            bool]:
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


def _flush_bounce(spans: list[tuple[GuestMemoryRegion, int, int]], views: list[memoryview],
                  done: int) -> None:
    """Copy what arrived in bounce buffers into regions that have no host memory."""
    for (region, offset, count), view in zip(spans, views, strict=True):
        if done <= 0:
            break
        if region.buffer is None:
            region.write_from(offset, view[:min(count, done)])
        done -= count


def _mark_written(spans: list[tuple[GuestMemoryRegion, int, int]], done: int) -> None:
    for region, offset, count in spans:
        if done <= 0:
            break
        if region.dirty is not None:
            region.dirty.mark(offset, min(count, done))
        done -= count


def _host_atomic(functions: HostAtomics, operation: str, fetch: str, host: int, order: int,
                 values: list[int], operands: tuple[Any, ...]) -> Any:
    """Run a checked atomic operation through libatomic at `host`."""
    if operation == "read_atomic":
        return functions.load(host, order)
    if operation == "write_atomic":
        functions.store(host, values[0], order)
        return None
    if operation == "swap":
        return functions.exchange(host, values[0], order)
    if operation == "compare_exchange":
        box = functions.kind.value_type(values[0])
        stored = functions.compare_exchange(host, ctypes.byref(box), values[1], order,
                                            int(operands[2]))
        return bool(stored), box.value
    return functions.fetch[fetch](host, values[0], order)
