"""The device side of a split virtqueue, on `GuestMemory`.

`SplitQueue` takes chains from the available ring (`pop`), returns them on the used
ring (`add_used`), and decides when the driver must be interrupted and when it may
kick (`needs_notification`, `enable_notification`, `disable_notification`), with or
without `VIRTIO_RING_F_EVENT_IDX`.

Synchronisation is the virtio spec's (2.7.13, "Supplying Buffers to The Device"):

- the available index is read with `read_atomic(ACQUIRE)`, so the ring entries and
  descriptors the driver wrote before publishing it are visible to the reads after;
- a used entry is written with `write_obj`, then the used index with `write_atomic`
  (RELEASE, or SEQ_CST with EVENT_IDX: the store must be ordered before the read of
  `used_event` that decides the interrupt, a full barrier);
- re-enabling kicks writes `avail_event` (or clears `used.flags`) with SEQ_CST before
  re-reading the available index, so a kick is never missed.

Everything the driver wrote is hostile input. A chain is walked and checked entirely
before a request sees it: descriptor indices inside their table, at most `size`
descriptors (a loop cannot run forever), indirect tables used only where negotiated,
not nested, not combined with NEXT, a whole number of descriptors and no more than
`size`; no device-readable buffer after a device-writable one; every buffer inside
guest memory. A violation raises a `VirtqueueError` subclass: the device must then stop
the queue and ask for a reset. The indirect table is read in one `read_obj` (a private
copy), so the driver cannot change it under the walk; its entries are then decoded in
one pass (`struct`, little-endian as the Structure's fields): a 1 MiB request is 256
of them, and a Structure's field reads per entry would be most of the request's cost.
"""

from __future__ import annotations

import ctypes
import struct
from bisect import bisect_right
from typing import Protocol

from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemory, GuestMemoryError, Ordering
from vm_memory_virtio.chain import DescriptorChain, Segment
from vm_memory_virtio.errors import InvalidAvailIndex, InvalidChain, InvalidQueueLayout
from vm_memory_virtio.layout import (
    DESC_SIZE,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_F_NO_NOTIFY,
    QueueLayout,
    VirtqDesc,
    VirtqUsedElem,
    to_le16,
)

_DESC_FORMAT = struct.Struct("<QIHH")  # VirtqDesc: addr, len, flags, next
assert _DESC_FORMAT.size == ctypes.sizeof(VirtqDesc)
_ACQUIRE = Ordering.ACQUIRE
_RELEASE = Ordering.RELEASE
_SEQ_CST = Ordering.SEQ_CST


class UsedTracker(Protocol):
    """Hooks around publishing a used entry (an inflight-I/O log for crash recovery)."""

    def before_publish(self, head: int) -> None:
        """The entry for `head` is written; the used index is not yet."""

    def after_publish(self, head: int, used_idx: int) -> None:
        """The used index now says `used_idx`, including `head`."""


class _Bounds:
    """Fast 'is [address, +length) inside guest memory' for one memory snapshot."""

    __slots__ = ("ends", "largest", "memory", "starts")

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        regions = memory.regions()
        self.starts = [region.start_value for region in regions]
        self.ends = [region.start_value + region.length for region in regions]
        spans = sorted(zip(self.starts, self.ends, strict=True), key=lambda s: s[0] - s[1])
        self.largest = spans[0] if spans else (0, 0)
        """(start, end) of the largest region: where most buffers are, checked inline."""

    def contains(self, address: int, length: int) -> bool:
        index = bisect_right(self.starts, address) - 1
        if index < 0 or address >= self.ends[index]:
            return False
        end = address + length
        while end > self.ends[index]:  # may continue into an adjacent region
            if index + 1 >= len(self.starts) or self.starts[index + 1] != self.ends[index]:
                return False
            index += 1
        return True


class SplitQueue:
    """One split virtqueue, device side; used from one thread at a time.

    The spec bounds a chain by the queue size; Linux nevertheless puts up to `seg_max`
    + 2 descriptors in one indirect table, so a device that advertises a larger
    `seg_max` accepts indirect tables up to `max_indirect` (QEMU's devices: 1024).

    `memory` is the snapshot the queue reads and writes; swap it with `set_memory`
    between requests (hot-plug): ring addresses are guest addresses and stay valid.
    """

    def __init__(self, memory: GuestMemory, layout: QueueLayout, *, index: int = 0,
                 event_idx: bool = False, indirect: bool = False, max_indirect: int = 0,
                 next_avail: int = 0, next_used: int | None = None) -> None:
        self.index = index
        self.layout = layout
        self.size = layout.size
        self.event_idx = event_idx
        self.indirect = indirect
        self.max_indirect = max(max_indirect, layout.size)
        self._descriptors = layout.descriptors()
        self._avail_entries = layout.avail_entries()
        self._used_entries = layout.used_entries()
        self._avail_idx = layout.avail_idx
        self._avail_flags = layout.avail_flags
        self._used_idx = layout.used_idx
        self._used_flags = layout.used_flags
        self._used_event = layout.used_event
        self._avail_event = layout.avail_event
        self._indirect_types: dict[int, type[ctypes.Array[VirtqDesc]]] = {}
        self.memory: GuestMemory = memory
        self._bounds = _Bounds(memory)
        for name, address, length in layout.parts():
            if not self._bounds.contains(address.raw_value(), length):
                raise InvalidQueueLayout(index, f"{name} [{address.raw_value():#x}, "
                                                f"+{length:#x}) is not in guest memory")
        self.next_avail = 0
        self._cached_avail = 0
        self.next_used = 0
        self.set_indices(next_avail, next_avail if next_used is None else next_used)
        self._signalled_used: int | None = None

    def set_indices(self, next_avail: int, next_used: int) -> None:
        """Where to continue: the next available entry to take, the next used entry to
        fill (after a restart). Only this may move them from outside."""
        self.next_avail = next_avail & 0xFFFF
        self._cached_avail = self.next_avail
        self.next_used = next_used & 0xFFFF

    def set_memory(self, memory: GuestMemory) -> None:
        """Use a new memory snapshot from now on (after a hot-plug)."""
        if memory is not self.memory:
            self.memory = memory
            self._bounds = _Bounds(memory)

    # ---- available ring ----------------------------------------------------------

    def avail_idx(self, order: Ordering = _ACQUIRE) -> int:
        """The driver's available index, checked against the queue size."""
        value = to_le16(self.memory.read_atomic(self._avail_idx, order))
        if (value - self.next_avail) & 0xFFFF > self.size:
            raise InvalidAvailIndex(self.index, value, self.next_avail, self.size)
        return value

    def used_idx(self) -> int:
        """The used index as it is in guest memory."""
        return to_le16(self.memory.read_atomic(self._used_idx, _ACQUIRE))

    def has_available(self) -> bool:
        """Whether the driver has published a chain this side has not popped."""
        if self._cached_avail == self.next_avail:
            self._cached_avail = self.avail_idx()
        return self._cached_avail != self.next_avail

    def pop(self) -> DescriptorChain | None:
        """The next available chain, walked and checked, or None if there is none."""
        if self._cached_avail == self.next_avail:
            self._cached_avail = self.avail_idx()
            if self._cached_avail == self.next_avail:
                return None
        head = self.memory.read_obj(self._avail_entries[self.next_avail & (self.size - 1)])
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        return self.chain(head)

    def chain(self, head: int) -> DescriptorChain:
        """Walk and check the chain starting at descriptor `head` (raises InvalidChain)."""
        size = self.size
        if head >= size:
            raise InvalidChain(self.index, head, head, f"head index past the table of {size}")
        contains = self._bounds.contains
        low, high = self._bounds.largest
        readable: list[Segment] = []
        writable: list[Segment] = []
        readable_bytes = writable_bytes = 0
        table: list[tuple[int, int, int, int]] | None = None  # a decoded indirect table
        table_size = size
        index = head
        budget = size
        while True:
            budget -= 1
            if budget < 0:
                raise InvalidChain(self.index, head, index,
                                   "the chain is longer than its table allows (a loop?)")
            address, length, flags, following = self._ring_descriptor(head, index) \
                if table is None else table[index]
            if flags & VIRTQ_DESC_F_INDIRECT:
                if table is not None:
                    raise InvalidChain(self.index, head, index, "nested indirect table")
                if not self.indirect:
                    raise InvalidChain(self.index, head, index,
                                       "indirect descriptor without INDIRECT_DESC negotiated")
                if flags & VIRTQ_DESC_F_NEXT:
                    raise InvalidChain(self.index, head, index, "INDIRECT together with NEXT")
                table = self._read_indirect(head, index, address, length)
                table_size = len(table)
                budget = table_size
                index = 0
                continue
            if not (low <= address < high and address + length <= high) and \
                    not contains(address, length):
                raise InvalidChain(self.index, head, index,
                                   f"buffer [{address:#x}, +{length:#x}) is not in guest "
                                   "memory")
            if flags & VIRTQ_DESC_F_WRITE:
                writable.append((address, length))
                writable_bytes += length
            elif writable:
                raise InvalidChain(self.index, head, index,
                                   "device-readable buffer after a device-writable one")
            else:
                readable.append((address, length))
                readable_bytes += length
            if not flags & VIRTQ_DESC_F_NEXT:
                return DescriptorChain(head, readable, writable, readable_bytes,
                                       writable_bytes)
            index = following
            if index >= table_size:
                raise InvalidChain(self.index, head, index,
                                   f"next index past the table of {table_size}")

    def _ring_descriptor(self, head: int, index: int) -> tuple[int, int, int, int]:
        """(addr, len, flags, next) of descriptor `index` of the ring's table."""
        try:
            descriptor = self.memory.read_obj(self._descriptors[index])
        except GuestMemoryError as error:
            raise InvalidChain(self.index, head, index, str(error)) from None
        return descriptor.addr, descriptor.len, descriptor.flags, descriptor.next

    def _read_indirect(self, head: int, index: int, address: int,
                       length: int) -> list[tuple[int, int, int, int]]:
        """A private copy of the indirect table (one `read_obj`), decoded: (addr, len,
        flags, next) per descriptor."""
        if length == 0 or length % DESC_SIZE:
            raise InvalidChain(self.index, head, index,
                               f"indirect table of {length} bytes is not a whole, non-zero "
                               "number of descriptors")
        count = length // DESC_SIZE
        if count > self.max_indirect:
            raise InvalidChain(self.index, head, index,
                               f"indirect table of {count} descriptors is longer than the "
                               f"{self.max_indirect} allowed")
        array_type = self._indirect_types.get(count)
        if array_type is None:
            array_type = self._indirect_types[count] = VirtqDesc * count
        try:
            aligned = AlignedGuestAddress.try_new(array_type, GuestAddress(address))
            copy = self.memory.read_obj(aligned) if aligned is not None else \
                self.memory.read_obj_unaligned(GuestAddress(address), array_type)
        except GuestMemoryError as error:
            raise InvalidChain(self.index, head, index,
                               f"indirect table unreadable: {error}") from None
        return list(_DESC_FORMAT.iter_unpack(copy))

    # ---- used ring ---------------------------------------------------------------

    def add_used(self, head: int, length: int, tracker: UsedTracker | None = None) -> None:
        """Return chain `head` with `length` bytes written into it, and publish it."""
        memory = self.memory
        memory.write_obj(self._used_entries[self.next_used & (self.size - 1)],
                         VirtqUsedElem(head, length))
        if tracker is not None:
            tracker.before_publish(head)
        self.next_used = (self.next_used + 1) & 0xFFFF
        memory.write_atomic(self._used_idx, to_le16(self.next_used),
                            _SEQ_CST if self.event_idx else _RELEASE)
        if tracker is not None:
            tracker.after_publish(head, self.next_used)

    def needs_notification(self) -> bool:
        """Whether the driver wants an interrupt for what was used since the last one."""
        if self.event_idx:
            new = self.next_used
            old = self._signalled_used
            self._signalled_used = new
            if old is None:
                return True
            event = to_le16(self.memory.read_atomic(self._used_event, _SEQ_CST))
            return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF
        flags = to_le16(self.memory.read_atomic(self._avail_flags, _ACQUIRE))
        return not flags & VIRTQ_AVAIL_F_NO_INTERRUPT

    def disable_notification(self) -> None:
        """Ask the driver not to kick (while the device is polling anyway)."""
        if not self.event_idx:
            self.memory.write_atomic(self._used_flags, to_le16(VIRTQ_USED_F_NO_NOTIFY),
                                     _RELEASE)

    def enable_notification(self) -> bool:
        """Ask the driver to kick on the next chain; True if one arrived meanwhile
        (then keep polling instead of sleeping)."""
        if self.event_idx:
            self.memory.write_atomic(self._avail_event, to_le16(self.next_avail), _SEQ_CST)
        else:
            self.memory.write_atomic(self._used_flags, 0, _SEQ_CST)
        self._cached_avail = self.avail_idx(_SEQ_CST)
        return self._cached_avail != self.next_avail
