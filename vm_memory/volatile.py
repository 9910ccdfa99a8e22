"""Views into guest memory: `VolatileSlice` (bytes in one region) and `VolatileRef[T]` /
`VolatileArrayRef[T]` (typed values at fixed addresses).

A view is a guest address range bound to a memory object; every access goes through
that object's access table, so bounds, read-only regions, atomicity and dirty tracking
behave exactly as on `GuestMemory`. A view keeps its memory object, and so the mapping,
alive: it can never outlive the memory it points into.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, overload

from vm_memory.address import GuestAddress, as_int, check_u64
from vm_memory.aligned_address import AlignedGuestAddress
from vm_memory.atomic_access import AtomicInteger
from vm_memory.buffers import byte_view
from vm_memory.byte_valued import Aggregate, ScalarValue, layout_of
from vm_memory.errors import IndexOutOfRange, InvalidArgumentType, InvalidRange, NoHostAddress
from vm_memory.ordering import Ordering
from vm_memory.region import GuestMemoryRegion

if TYPE_CHECKING:
    from vm_memory.buffer_types import Buffer, WritableBuffer


class ViewedMemory(Protocol):
    """What a view needs of the memory it points into (a `GuestMemory` is one)."""

    def read_slice(self, address: GuestAddress, buffer: WritableBuffer) -> None: ...
    def write_slice(self, address: GuestAddress, data: Buffer) -> None: ...
    def read_bytes(self, address: GuestAddress, length: int) -> bytes: ...
    def read_obj(self, address: AlignedGuestAddress[Any]) -> Any: ...
    def write_obj(self, address: AlignedGuestAddress[Any], value: Any) -> None: ...
    def read_atomic(self, address: AlignedGuestAddress[Any], order: Ordering = ...) -> int: ...
    def write_atomic(self, address: AlignedGuestAddress[Any], value: int,
                     order: Ordering = ...) -> None: ...
    def fetch_add(self, address: AlignedGuestAddress[Any], value: int,
                  order: Ordering = ...) -> int: ...
    def swap(self, address: AlignedGuestAddress[Any], value: int,
             order: Ordering = ...) -> int: ...
    def compare_exchange(self, address: AlignedGuestAddress[Any], expected: int,
                         desired: int, success: Ordering = ...,
                         failure: Ordering = ...) -> tuple[bool, int]: ...


_T_co = TypeVar("_T_co", covariant=True)
_V = TypeVar("_V")
_A = TypeVar("_A", bound=Aggregate)
_E = TypeVar("_E", bound="ctypes._CData")  # pyright: ignore[reportPrivateUsage]
_SEQ_CST = Ordering.SEQ_CST


class VolatileSlice:
    """`length` bytes of guest memory inside one region, starting at `address`."""

    __slots__ = ("address", "length", "memory", "offset", "region")

    def __init__(self, memory: ViewedMemory, region: GuestMemoryRegion, offset: int,
                 length: int) -> None:
        """Made by `GuestMemory.get_slice`/`get_slices`, which check the range first;
        made by hand, the region and range are checked here (exact ints)."""
        if not issubclass(type(region), GuestMemoryRegion):
            raise InvalidArgumentType("a slice's region", "a GuestMemoryRegion", region)
        if type(offset) is not int or type(length) is not int:
            raise InvalidArgumentType("a slice's offset and length", "ints", (offset, length))
        if not 0 <= offset <= offset + length <= region.length:
            raise InvalidRange(region.start_value + offset, length,
                               f"outside {region!r}")
        self.memory = memory
        self.region = region
        self.offset = offset
        self.length = length
        self.address = GuestAddress(region.start_value + offset)

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"VolatileSlice({self.address.raw_value():#x}, length={self.length:#x})"

    def _checked(self, offset: int, length: int) -> tuple[int, int, GuestAddress]:
        """`offset` and `length` as ints (converted once) inside the slice, and the guest
        address at `offset`; else a typed error."""
        offset = check_u64(offset, "offset")
        length = check_u64(length, "length")
        if offset + length > self.length:  # reported from the slice's start: in range
            raise InvalidRange(self.address.raw_value(), self.length,
                               f"[{offset:#x}, +{length:#x}) is outside the slice")
        return offset, length, GuestAddress(self.address.raw_value() + offset)

    def subslice(self, offset: int, length: int) -> VolatileSlice:
        """The part `[offset, offset + length)` of this slice."""
        offset, length, _ = self._checked(offset, length)
        return VolatileSlice(self.memory, self.region, self.offset + offset, length)

    def split_at(self, middle: int) -> tuple[VolatileSlice, VolatileSlice]:
        """The slice cut in two at `middle`."""
        middle, _, _ = self._checked(middle, 0)
        return self.subslice(0, middle), self.subslice(middle, self.length - middle)

    def read(self, offset: int, buffer: WritableBuffer) -> None:
        """Fill `buffer` from the slice at `offset`; all or nothing."""
        view = byte_view(buffer, writable=True, what="buffer")
        if not len(view):
            return
        _, _, address = self._checked(offset, len(view))
        self.memory.read_slice(address, view)

    def write(self, offset: int, data: Buffer) -> None:
        """Copy all of `data` into the slice at `offset`; all or nothing. Writing nothing
        succeeds wherever it is asked (as in Rust vm-memory)."""
        view = byte_view(data, writable=False, what="data")
        if not len(view):
            return
        _, _, address = self._checked(offset, len(view))
        self.memory.write_slice(address, view)

    def copy_to(self, buffer: WritableBuffer) -> int:
        """Copy whole elements of the slice into `buffer` (bytes, or typed items such as
        an `array('I')`), as many as fit; returns the count of elements copied."""
        view = byte_view(buffer, writable=True, what="buffer")
        itemsize = memoryview(buffer).itemsize
        count = min(len(view), self.length) // itemsize
        self.memory.read_slice(self.address, view[:count * itemsize])
        return count

    def copy_from(self, data: Buffer) -> int:
        """Copy whole elements of `data` into the slice, as many as fit; returns the count
        of elements copied."""
        view = byte_view(data, writable=False, what="data")
        itemsize = memoryview(data).itemsize
        count = min(len(view), self.length) // itemsize
        self.memory.write_slice(self.address, view[:count * itemsize])
        return count

    def to_bytes(self) -> bytes:
        """The slice's bytes, copied."""
        return self.memory.read_bytes(self.address, self.length)

    def as_memoryview(self) -> memoryview:
        """The slice as a buffer, zero-copy (host-backed regions only).

        Writes through it bypass the library: call `mark_dirty` after writing if dirty
        tracking is on. A read-only region gives a read-only view.
        """
        buffer = self.region.buffer
        if buffer is None:
            raise NoHostAddress(self.address.raw_value(), self.region.kind)
        return buffer[self.offset:self.offset + self.length]

    def mark_dirty(self) -> None:
        """Mark the slice's pages dirty (after writing through `as_memoryview`)."""
        if self.region.dirty is not None and self.length:
            self.region.dirty.mark(self.offset, self.length)

    def get_ref(self, ctype: type[_V], offset: int) -> VolatileRef[_V]:
        """A typed reference to the `ctype` value at `offset` (aligned for it)."""
        size = layout_of(ctype).size
        _, _, address = self._checked(offset, size)
        return VolatileRef(self.memory, AlignedGuestAddress.new(ctype, address))

    def get_array_ref(self, ctype: type[_V], offset: int, count: int) -> VolatileArrayRef[_V]:
        """A typed reference to `count` consecutive `ctype` values at `offset`."""
        size = layout_of(ctype).size
        count = check_u64(count, "count")
        _, _, address = self._checked(offset, size * count)
        return VolatileArrayRef(self.memory, AlignedGuestAddress.new(ctype, address), count)


class VolatileRef(Generic[_T_co]):
    """The value of type T at one aligned guest address, with typed and atomic access."""

    __slots__ = ("address", "memory")

    def __init__(self, memory: ViewedMemory, address: AlignedGuestAddress[_T_co]) -> None:
        self.memory = memory
        self.address = address

    def __repr__(self) -> str:
        return f"VolatileRef({self.address!r})"

    # Arrays, then scalars, then Structures and Unions: plain mypy does not hold a
    # `self` type's TypeVar to its bound, so an aggregate overload first would bind a
    # scalar's `self` to it and return the ctype. (A Structure answers any attribute,
    # `value` too: under plain mypy its `load()` is Any; pyright and the plugin give the
    # Structure.)
    @overload
    def load(self: VolatileRef[ctypes.Array[_E]]) -> ctypes.Array[_E]: ...
    @overload
    def load(self: VolatileRef[ScalarValue[_V]]) -> _V: ...
    @overload
    def load(self: VolatileRef[_A]) -> _A: ...
    def load(self) -> Any:
        """The value (`read_obj`: not atomic)."""
        address: AlignedGuestAddress[Any] = self.address
        return self.memory.read_obj(address)

    @overload
    def store(self: VolatileRef[_A], value: _A) -> None: ...
    @overload
    def store(self: VolatileRef[ScalarValue[_V]], value: _V) -> None: ...
    def store(self, value: Any) -> None:
        """Store the value (`write_obj`: not atomic)."""
        address: AlignedGuestAddress[Any] = self.address
        self.memory.write_obj(address, value)

    def read_atomic(self: VolatileRef[AtomicInteger], order: Ordering = _SEQ_CST) -> int:
        """One hardware-atomic load."""
        return self.memory.read_atomic(self.address, order)

    def write_atomic(self: VolatileRef[AtomicInteger], value: int,
                     order: Ordering = _SEQ_CST) -> None:
        """One hardware-atomic store."""
        self.memory.write_atomic(self.address, value, order)

    def fetch_add(self: VolatileRef[AtomicInteger], value: int, order: Ordering = _SEQ_CST) -> int:
        """Atomic add; returns the old value."""
        return self.memory.fetch_add(self.address, value, order)

    def swap(self: VolatileRef[AtomicInteger], value: int, order: Ordering = _SEQ_CST) -> int:
        """Atomic exchange; returns the old value."""
        return self.memory.swap(self.address, value, order)

    def compare_exchange(self: VolatileRef[AtomicInteger], expected: int, desired: int,
                         success: Ordering = _SEQ_CST,
                         failure: Ordering = _SEQ_CST) -> tuple[bool, int]:
        """Atomic compare-and-swap; returns (stored, value seen)."""
        return self.memory.compare_exchange(self.address, expected, desired, success,
                                            failure)


class VolatileArrayRef(Generic[_T_co]):
    """`count` consecutive values of type T starting at an aligned guest address."""

    __slots__ = ("address", "count", "memory")

    def __init__(self, memory: ViewedMemory, address: AlignedGuestAddress[_T_co],
                 count: int) -> None:
        self.memory = memory
        self.address = address
        self.count = check_u64(count, "count")

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> VolatileRef[_T_co]:
        index = as_int(index, "an array index")  # converted once: no float, no lying int
        if not -self.count <= index < self.count:
            raise IndexOutOfRange(index, self.count)
        return VolatileRef(self.memory, self.address.offset(index % self.count))

    def __iter__(self) -> Iterator[VolatileRef[_T_co]]:
        return (self[index] for index in range(self.count))

