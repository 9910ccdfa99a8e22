"""The virtio 1.x split-ring layout: feature bits, flags, structures and ring addresses.

All ring structures are little-endian (`Le16`/`Le32`/`Le64` fields), as virtio 1.x
(`VIRTIO_F_VERSION_1`) requires. The ring indices are read and written as native
`c_uint16` atomics (the atomic types are native-endian): on a little-endian host that is
the same two bytes; on a big-endian host `to_le16` swaps them.

Layout of a queue of `size` entries (a power of two up to 32768):

- descriptor table, 16-byte aligned: `size` x `VirtqDesc`;
- available ring, 2-byte aligned: flags, idx, ring[size] (heads), used_event;
- used ring, 4-byte aligned: flags, idx, ring[size] (`VirtqUsedElem`), avail_event.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Final

from vm_memory import AlignedGuestAddress, GuestAddress, Le16, Le32, Le64
from vm_memory_virtio.errors import InvalidQueueLayout

# Descriptor flags.
VIRTQ_DESC_F_NEXT: Final = 1
"""The chain continues in the descriptor named by `next`."""
VIRTQ_DESC_F_WRITE: Final = 2
"""The buffer is device-writable (otherwise device-readable)."""
VIRTQ_DESC_F_INDIRECT: Final = 4
"""The buffer is a table of descriptors (`VIRTIO_RING_F_INDIRECT_DESC`)."""

# Ring flags (meaningful only without EVENT_IDX).
VIRTQ_AVAIL_F_NO_INTERRUPT: Final = 1
"""Driver to device: do not interrupt me when you use a buffer."""
VIRTQ_USED_F_NO_NOTIFY: Final = 1
"""Device to driver: do not kick me when you add a buffer."""

# Feature bits (bit numbers).
VIRTIO_RING_F_INDIRECT_DESC: Final = 28
VIRTIO_RING_F_EVENT_IDX: Final = 29
VIRTIO_F_VERSION_1: Final = 32

MAX_QUEUE_SIZE: Final = 0x8000
_RING_HEADER: Final = 4  # flags + idx


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


DESC_SIZE: Final = ctypes.sizeof(VirtqDesc)
USED_ELEM_SIZE: Final = ctypes.sizeof(VirtqUsedElem)


def to_le16(value: int) -> int:
    """A native u16 (as an atomic access returns it) as the Le16 the ring means, or back."""
    if sys.byteorder == "little":
        return value
    return ((value & 0xFF) << 8) | (value >> 8)


def feature(bit: int) -> int:
    """The mask of feature bit `bit`."""
    return 1 << bit


@dataclass(frozen=True)
class QueueLayout:
    """Where one split queue lives in guest memory, with every address it uses built once.

    Checked address construction is most of the cost of a ring operation in Python, so
    the per-entry addresses are made here, once per queue start.
    """

    size: int
    desc_table: GuestAddress
    avail_ring: GuestAddress
    used_ring: GuestAddress

    def __post_init__(self) -> None:
        if not 0 < self.size <= MAX_QUEUE_SIZE or self.size & (self.size - 1):
            raise InvalidQueueLayout(-1, f"queue size {self.size} is not a power of two "
                                         f"up to {MAX_QUEUE_SIZE}")
        for name, address, alignment in (("descriptor table", self.desc_table, 16),
                                         ("available ring", self.avail_ring, 2),
                                         ("used ring", self.used_ring, 4)):
            if address.raw_value() % alignment:
                raise InvalidQueueLayout(-1, f"{name} at {address.raw_value():#x} is not "
                                             f"{alignment}-byte aligned")
            if address.checked_add(self.part_bytes(name)) is None:
                raise InvalidQueueLayout(-1, f"{name} at {address.raw_value():#x} passes "
                                             "the end of the address space")

    def part_bytes(self, name: str) -> int:
        """The size of one part: "descriptor table", "available ring" or "used ring"."""
        if name == "descriptor table":
            return DESC_SIZE * self.size
        if name == "available ring":
            return avail_ring_bytes(self.size)
        return used_ring_bytes(self.size)

    def parts(self) -> list[tuple[str, GuestAddress, int]]:
        """(name, address, bytes) of the three parts."""
        return [(name, address, self.part_bytes(name)) for name, address in
                (("descriptor table", self.desc_table), ("available ring", self.avail_ring),
                 ("used ring", self.used_ring))]

    @classmethod
    def contiguous(cls, size: int, base: GuestAddress) -> QueueLayout:
        """The three parts one after another from `base` (the legacy layout, 4 KiB used)."""
        avail = base + DESC_SIZE * size
        used = (avail + avail_ring_bytes(size)).align_up(4096)
        return cls(size, base, avail, used)

    def descriptors(self) -> list[AlignedGuestAddress[VirtqDesc]]:
        """The address of every descriptor of the table."""
        first = AlignedGuestAddress.new(VirtqDesc, self.desc_table)
        return [first.offset(index) for index in range(self.size)]

    def avail_entries(self) -> list[AlignedGuestAddress[Le16]]:
        """`avail.ring[i]` for every i."""
        first = AlignedGuestAddress.new(Le16, self.avail_ring + _RING_HEADER)
        return [first.offset(index) for index in range(self.size)]

    def used_entries(self) -> list[AlignedGuestAddress[VirtqUsedElem]]:
        """`used.ring[i]` for every i."""
        first = AlignedGuestAddress.new(VirtqUsedElem, self.used_ring + _RING_HEADER)
        return [first.offset(index) for index in range(self.size)]

    @property
    def avail_flags(self) -> AlignedGuestAddress[ctypes.c_uint16]:
        return AlignedGuestAddress.new(ctypes.c_uint16, self.avail_ring)

    @property
    def avail_idx(self) -> AlignedGuestAddress[ctypes.c_uint16]:
        return AlignedGuestAddress.new(ctypes.c_uint16, self.avail_ring + 2)

    @property
    def used_event(self) -> AlignedGuestAddress[ctypes.c_uint16]:
        """Written by the driver (EVENT_IDX): interrupt me when used idx passes this."""
        return AlignedGuestAddress.new(ctypes.c_uint16,
                                       self.avail_ring + _RING_HEADER + 2 * self.size)

    @property
    def used_flags(self) -> AlignedGuestAddress[ctypes.c_uint16]:
        return AlignedGuestAddress.new(ctypes.c_uint16, self.used_ring)

    @property
    def used_idx(self) -> AlignedGuestAddress[ctypes.c_uint16]:
        return AlignedGuestAddress.new(ctypes.c_uint16, self.used_ring + 2)

    @property
    def avail_event(self) -> AlignedGuestAddress[ctypes.c_uint16]:
        """Written by the device (EVENT_IDX): kick me when avail idx passes this."""
        return AlignedGuestAddress.new(
            ctypes.c_uint16, self.used_ring + _RING_HEADER + USED_ELEM_SIZE * self.size)


def avail_ring_bytes(size: int) -> int:
    """flags, idx, ring[size], used_event."""
    return _RING_HEADER + 2 * size + 2


def used_ring_bytes(size: int) -> int:
    """flags, idx, ring[size] of VirtqUsedElem, avail_event."""
    return _RING_HEADER + USED_ELEM_SIZE * size + 2
