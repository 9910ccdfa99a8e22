"""The demo's ring: a small virtio-style split virtqueue over `GuestMemory` (layout,
driver and device), just enough for `vm_memory_tools.demo`. Device back-ends use the
virtio queue package, `vm_memory_virtio`.

The layout is the virtio 1.x split ring: a descriptor table (`VirtqDesc`), an available
ring (driver to device: ``flags``, ``idx``, ``ring[size]``) and a used ring (device to
driver: ``flags``, ``idx``, ``ring[size]`` of `VirtqUsedElem`), all little-endian.

The two ring indices are the only places where the sides synchronise, so they are the
only atomic accesses: the side that publishes writes its index with
``write_atomic(RELEASE)`` after writing the entries, and the other side reads it with
``read_atomic(ACQUIRE)`` before reading them. Everything else is a plain, bounds-checked
``read_obj``/``write_obj``. The indices are read as native ``c_uint16`` (the atomic
types are native-endian); on a little-endian host, the only kind KVM runs x86 guests on,
that is the same two bytes as the ``Le16`` field, and the classes refuse to work on a
big-endian host rather than publish byte-swapped indices.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Final

from vm_memory.address import GuestAddress
from vm_memory.aligned_address import AlignedGuestAddress
from vm_memory.endian import Le16, Le32, Le64
from vm_memory.errors import GuestMemoryError
from vm_memory.guest_memory import GuestMemory
from vm_memory.ordering import Ordering

__all__ = [
    "VIRTQ_DESC_F_NEXT",
    "VIRTQ_DESC_F_WRITE",
    "Buffer",
    "DescriptorChain",
    "RingError",
    "SplitRingDevice",
    "SplitRingDriver",
    "SplitRingLayout",
    "VirtqDesc",
    "VirtqRingHeader",
    "VirtqUsedElem",
]

VIRTQ_DESC_F_NEXT: Final = 1
"""The descriptor continues in the one named by its ``next`` field."""
VIRTQ_DESC_F_WRITE: Final = 2
"""The buffer is device-writable (otherwise device-readable)."""

_INDEX_MASK: Final = 0xFFFF
_RING_HEADER_SIZE: Final = 4  # flags + idx, before ring[]
_IDX_OFFSET: Final = 2


class VirtqDesc(ctypes.Structure):
    """One descriptor: a guest buffer, its length, flags and the next descriptor."""

    _fields_: ClassVar = [("addr", Le64), ("len", Le32), ("flags", Le16), ("next", Le16)]
    if TYPE_CHECKING:
        addr: int
        len: int
        flags: int
        next: int


class VirtqUsedElem(ctypes.Structure):
    """One used-ring entry: the head of a finished chain and the bytes written to it."""

    _fields_: ClassVar = [("id", Le32), ("len", Le32)]
    if TYPE_CHECKING:
        id: int
        len: int


class VirtqRingHeader(ctypes.Structure):
    """The ``flags`` and ``idx`` words at the start of the available and used rings."""

    _fields_: ClassVar = [("flags", Le16), ("idx", Le16)]
    if TYPE_CHECKING:
        flags: int
        idx: int


class RingError(GuestMemoryError):
    """The other side broke the ring protocol (an index ran ahead, a chain loops...)."""


@dataclass(frozen=True)
class SplitRingLayout:
    """Where one queue of ``size`` entries lives in guest memory.

    Alignments are the virtio ones: 16 for the descriptor table, 2 for the available
    ring, 4 for the used ring. ``size`` is a power of two up to 32768.
    """

    size: int
    desc_table: GuestAddress
    avail_ring: GuestAddress
    used_ring: GuestAddress

    def __post_init__(self) -> None:
        if not 0 < self.size <= 0x8000 or self.size & (self.size - 1):
            raise ValueError(f"queue size {self.size} is not a power of two up to 32768")
        for name, address, alignment in (("descriptor table", self.desc_table, 16),
                                         ("available ring", self.avail_ring, 2),
                                         ("used ring", self.used_ring, 4)):
            if address.raw_value() % alignment:
                raise ValueError(f"{name} at {address.raw_value():#x} is not "
                                 f"{alignment}-byte aligned")

    @classmethod
    def contiguous(cls, size: int, base: GuestAddress) -> SplitRingLayout:
        """The three parts one after another from ``base`` (used ring 4-byte aligned)."""
        desc_table = base
        avail_ring = desc_table + size * ctypes.sizeof(VirtqDesc)
        used_ring = (avail_ring + cls.avail_ring_bytes(size)).align_up(4)
        return cls(size, desc_table, avail_ring, used_ring)

    @staticmethod
    def avail_ring_bytes(size: int) -> int:
        """flags, idx, ring[size], used_event."""
        return _RING_HEADER_SIZE + 2 * size + 2

    @staticmethod
    def used_ring_bytes(size: int) -> int:
        """flags, idx, ring[size] of VirtqUsedElem, avail_event."""
        return _RING_HEADER_SIZE + ctypes.sizeof(VirtqUsedElem) * size + 2

    @property
    def end(self) -> GuestAddress:
        """One past the highest byte any part of the queue uses."""
        ends = (self.desc_table + self.size * ctypes.sizeof(VirtqDesc),
                self.avail_ring + self.avail_ring_bytes(self.size),
                self.used_ring + self.used_ring_bytes(self.size))
        return max(ends)

    def descriptor(self, index: int) -> AlignedGuestAddress[VirtqDesc]:
        """Address of descriptor ``index``."""
        return AlignedGuestAddress.new(
            VirtqDesc, self.desc_table + index * ctypes.sizeof(VirtqDesc))

    def avail_idx(self) -> AlignedGuestAddress[ctypes.c_uint16]:
        """The available ring's ``idx`` word (written by the driver only)."""
        return AlignedGuestAddress.new(ctypes.c_uint16, self.avail_ring + _IDX_OFFSET)

    def avail_entry(self, position: int) -> AlignedGuestAddress[Le16]:
        """``avail.ring[position % size]``: the head of a published chain."""
        return AlignedGuestAddress.new(
            Le16, self.avail_ring + _RING_HEADER_SIZE + 2 * (position % self.size))

    def used_idx(self) -> AlignedGuestAddress[ctypes.c_uint16]:
        """The used ring's ``idx`` word (written by the device only)."""
        return AlignedGuestAddress.new(ctypes.c_uint16, self.used_ring + _IDX_OFFSET)

    def used_entry(self, position: int) -> AlignedGuestAddress[VirtqUsedElem]:
        """``used.ring[position % size]``."""
        return AlignedGuestAddress.new(
            VirtqUsedElem, self.used_ring + _RING_HEADER_SIZE
            + ctypes.sizeof(VirtqUsedElem) * (position % self.size))


@dataclass(frozen=True)
class Buffer:
    """One guest buffer of a chain as the device sees it."""

    address: GuestAddress
    length: int
    writable: bool


@dataclass(frozen=True)
class DescriptorChain:
    """A chain the driver made available: its head descriptor index and its buffers."""

    head: int
    buffers: tuple[Buffer, ...]


def _require_little_endian() -> None:
    if sys.byteorder != "little":
        raise RuntimeError("the split ring accesses its Le16 indices as native c_uint16 "
                           "atomics, which needs a little-endian host")


class _RingSide:
    """What both sides of a queue hold: the memory, the layout, every ring address."""

    def __init__(self, memory: GuestMemory, layout: SplitRingLayout) -> None:
        _require_little_endian()
        self.memory = memory
        self.layout = layout
        self._avail_idx = layout.avail_idx()
        self._used_idx = layout.used_idx()
        # Every address a side touches, built once: checked address construction is
        # most of the cost of a ring operation in Python.
        self._descriptors = [layout.descriptor(index) for index in range(layout.size)]
        self._avail_entries = [layout.avail_entry(index) for index in range(layout.size)]
        self._used_entries = [layout.used_entry(index) for index in range(layout.size)]
        self._next_avail = 0
        self._next_used = 0


class SplitRingDevice(_RingSide):
    """The device side: takes chains from the available ring, returns them on the used ring.

    One device object per queue, used from one thread.
    """

    def available(self) -> int:
        """How many chains the driver has published that this side has not popped."""
        published = self.memory.read_atomic(self._avail_idx, Ordering.ACQUIRE)
        pending = (published - self._next_avail) & _INDEX_MASK
        if pending > self.layout.size:
            raise RingError(f"available index {published} is {pending} entries ahead of "
                            f"{self._next_avail}, more than the queue size {self.layout.size}")
        return pending

    def pop(self) -> DescriptorChain | None:
        """The next available chain, or None if the driver has published nothing new.

        The ACQUIRE load of the available index makes the ring entry and the
        descriptors the driver wrote before its RELEASE visible here.
        """
        if self.available() == 0:
            return None
        head = self.memory.read_obj(self._avail_entries[self._next_avail % self.layout.size])
        self._next_avail = (self._next_avail + 1) & _INDEX_MASK
        return DescriptorChain(head, self._walk(head))

    def _walk(self, head: int) -> tuple[Buffer, ...]:
        buffers: list[Buffer] = []
        index = head
        for _ in range(self.layout.size):
            if index >= self.layout.size:
                raise RingError(f"descriptor index {index} is past the table of "
                                f"{self.layout.size} (chain from head {head})")
            descriptor = self.memory.read_obj(self._descriptors[index])
            buffers.append(Buffer(GuestAddress(descriptor.addr), descriptor.len,
                                  bool(descriptor.flags & VIRTQ_DESC_F_WRITE)))
            if not descriptor.flags & VIRTQ_DESC_F_NEXT:
                return tuple(buffers)
            index = descriptor.next
        raise RingError(f"the chain from head {head} is longer than the queue: a loop")

    def push(self, head: int, written: int) -> None:
        """Return chain ``head`` with ``written`` bytes filled in, and publish it.

        The entry is written first, then the used index with RELEASE, so a driver that
        reads the index with ACQUIRE sees the entry and every reply byte before it.
        """
        self.memory.write_obj(self._used_entries[self._next_used % self.layout.size],
                              VirtqUsedElem(head, written))
        self._next_used = (self._next_used + 1) & _INDEX_MASK
        self.memory.write_atomic(self._used_idx, self._next_used, Ordering.RELEASE)


class SplitRingDriver(_RingSide):
    """The driver side: publishes buffer chains, collects the used ones.

    Descriptors come from a free list; one driver object per queue, used from one thread.
    """

    def __init__(self, memory: GuestMemory, layout: SplitRingLayout) -> None:
        super().__init__(memory, layout)
        self._free = list(range(layout.size - 1, -1, -1))
        self._chains: dict[int, list[int]] = {}  # head -> descriptor indices in flight
        memory.write_obj(AlignedGuestAddress.new(VirtqRingHeader, layout.avail_ring),
                         VirtqRingHeader(0, 0))
        memory.write_obj(AlignedGuestAddress.new(VirtqRingHeader, layout.used_ring),
                         VirtqRingHeader(0, 0))

    @property
    def free_descriptors(self) -> int:
        """Descriptors not in any published chain."""
        return len(self._free)

    def publish(self, buffers: list[Buffer]) -> int:
        """Write ``buffers`` as one chain, make it available, return its head index.

        Raises `RingError` when there are not enough free descriptors (collect used
        chains with `pop_used` first).
        """
        if not buffers:
            raise ValueError("a chain needs at least one buffer")
        if len(buffers) > len(self._free):
            raise RingError(f"{len(buffers)} descriptors needed, {len(self._free)} free")
        indices = [self._free.pop() for _ in buffers]
        for position, (index, buffer) in enumerate(zip(indices, buffers, strict=True)):
            last = position == len(buffers) - 1
            flags = (0 if last else VIRTQ_DESC_F_NEXT) | \
                (VIRTQ_DESC_F_WRITE if buffer.writable else 0)
            self.memory.write_obj(self._descriptors[index], VirtqDesc(
                buffer.address.raw_value(), buffer.length, flags,
                0 if last else indices[position + 1]))
        head = indices[0]
        self._chains[head] = indices
        self.memory.write_obj(self._avail_entries[self._next_avail % self.layout.size], head)
        self._next_avail = (self._next_avail + 1) & _INDEX_MASK
        self.memory.write_atomic(self._avail_idx, self._next_avail, Ordering.RELEASE)
        return head

    def pop_used(self) -> VirtqUsedElem | None:
        """The next chain the device returned (its head and written length), or None."""
        published = self.memory.read_atomic(self._used_idx, Ordering.ACQUIRE)
        if published == self._next_used:
            return None
        element = self.memory.read_obj(self._used_entries[self._next_used % self.layout.size])
        self._next_used = (self._next_used + 1) & _INDEX_MASK
        self._release(element.id)
        return element

    def _release(self, head: int) -> None:
        indices = self._chains.pop(head, None)
        if indices is None:
            raise RingError(f"the device returned head {head}, which is not in flight")
        self._free.extend(reversed(indices))
