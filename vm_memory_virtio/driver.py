"""The driver side of a split virtqueue: enough to test a device honestly and hostilely.

`DriverQueue` builds chains the way a guest driver does (direct or through an indirect
table), publishes them with `write_atomic(RELEASE)` on the available index, collects
used entries with `read_atomic(ACQUIRE)`, and follows EVENT_IDX both ways. Its raw
methods (`write_descriptor`, `write_avail_entry`, `set_avail_idx`) write whatever a
hostile guest would: loops, wild lengths, wrong flags, indices far ahead.
"""

from __future__ import annotations

import ctypes

from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemory, Ordering
from vm_memory_virtio.chain import Segment
from vm_memory_virtio.errors import InvalidUsedEntry
from vm_memory_virtio.layout import (
    DESC_SIZE,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_F_NO_NOTIFY,
    QueueLayout,
    VirtqDesc,
    to_le16,
)


class DriverQueue:
    """One split virtqueue, driver side; used from one thread."""

    def __init__(self, memory: GuestMemory, layout: QueueLayout, *,
                 event_idx: bool = False, index: int = 0) -> None:
        self.memory = memory
        self.index = index
        self.layout = layout
        self.size = layout.size
        self.event_idx = event_idx
        self._descriptors = layout.descriptors()
        self._avail_entries = layout.avail_entries()
        self._used_entries = layout.used_entries()
        for _, address, length in layout.parts():
            memory.write_slice(address, bytes(length))
        self._free = list(range(layout.size - 1, -1, -1))
        self._in_flight: dict[int, list[int]] = {}
        self.next_avail = 0
        self.next_used = 0

    # ---- honest chains -------------------------------------------------------------

    def add(self, readable: list[Segment], writable: list[Segment], *,
            indirect_table: GuestAddress | None = None) -> int:
        """Publish a chain of `readable` then `writable` buffers; returns its head.

        With `indirect_table`, the buffers go in a table written there and the chain is
        one INDIRECT descriptor.
        """
        buffers = [(address, length, 0) for address, length in readable] + \
                  [(address, length, VIRTQ_DESC_F_WRITE) for address, length in writable]
        if not buffers:
            raise ValueError("a chain needs at least one buffer")
        if indirect_table is not None:
            table = (VirtqDesc * len(buffers))()
            for position, (address, length, flags) in enumerate(buffers):
                more = position + 1 < len(buffers)
                table[position] = VirtqDesc(address, length,
                                            flags | (VIRTQ_DESC_F_NEXT if more else 0),
                                            position + 1 if more else 0)
            self.memory.write_slice(indirect_table, bytes(table))
            buffers = [(indirect_table.raw_value(), DESC_SIZE * len(buffers),
                        VIRTQ_DESC_F_INDIRECT)]
        if len(buffers) > len(self._free):
            raise ValueError(f"{len(buffers)} descriptors needed, {len(self._free)} free")
        indices = [self._free.pop() for _ in buffers]
        for position, (index, (address, length, flags)) in enumerate(
                zip(indices, buffers, strict=True)):
            more = position + 1 < len(buffers)
            self.write_descriptor(index, VirtqDesc(
                address, length, flags | (VIRTQ_DESC_F_NEXT if more else 0),
                indices[position + 1] if more else 0))
        head = indices[0]
        self._in_flight[head] = indices
        self.write_avail_entry(self.next_avail, head)
        self.set_avail_idx((self.next_avail + 1) & 0xFFFF)
        return head

    def free_count(self) -> int:
        """Descriptors not in any chain in flight."""
        return len(self._free)

    def used(self) -> list[tuple[int, int]]:
        """Every (head, written length) the device returned since the last call.

        The device is not trusted: a head that is not in flight, or a used index further
        ahead than the chains in flight, raises `InvalidUsedEntry` and consumes nothing.
        """
        # SEQ_CST, not just ACQUIRE: with event_idx, the previous call's store of
        # used_event and this load must not pass each other (the device does the mirror
        # image, publish then read used_event): a driver that calls `used()` again before
        # it waits for an interrupt then misses no completion.
        published = to_le16(self.memory.read_atomic(self.layout.used_idx, Ordering.SEQ_CST))
        ahead = (published - self.next_used) & 0xFFFF
        if ahead > len(self._in_flight):
            raise InvalidUsedEntry(self.index, -1, f"used index {published} is {ahead} "
                                   f"entries ahead of {self.next_used}, with "
                                   f"{len(self._in_flight)} chains in flight")
        entries = [self.memory.read_obj(self._used_entries[(self.next_used + step) % self.size])
                   for step in range(ahead)]
        seen: set[int] = set()
        for entry in entries:
            head = entry.id
            if head not in self._in_flight:
                raise InvalidUsedEntry(self.index, head, "not a chain in flight")
            if head in seen:
                raise InvalidUsedEntry(self.index, head, "returned twice")
            seen.add(head)
        result: list[tuple[int, int]] = []
        for entry in entries:
            result.append((entry.id, entry.len))
            self._free.extend(reversed(self._in_flight.pop(entry.id)))
        self.next_used = published
        if self.event_idx:
            self.memory.write_atomic(self.layout.used_event, to_le16(self.next_used))
        return result

    def kick_needed(self, old_avail: int) -> bool:
        """Whether the device asked to be kicked for chains published after `old_avail`."""
        if self.event_idx:
            event = to_le16(self.memory.read_atomic(self.layout.avail_event))
            return (self.next_avail - event - 1) & 0xFFFF < (self.next_avail - old_avail) \
                & 0xFFFF
        flags = to_le16(self.memory.read_atomic(self.layout.used_flags))
        return not flags & VIRTQ_USED_F_NO_NOTIFY

    def set_interrupts(self, wanted: bool, used_event: int | None = None) -> None:
        """Ask for interrupts or not (NO_INTERRUPT flag), or set `used_event`."""
        if used_event is not None:
            self.memory.write_atomic(self.layout.used_event, to_le16(used_event))
        self.memory.write_atomic(self.layout.avail_flags,
                                 to_le16(0 if wanted else VIRTQ_AVAIL_F_NO_INTERRUPT))

    # ---- raw writes, for hostile tables ---------------------------------------------

    def write_descriptor(self, index: int, descriptor: VirtqDesc) -> None:
        """Store `descriptor` at `index` of the table, whatever it says."""
        self.memory.write_obj(self._descriptors[index % self.size], descriptor)

    def write_avail_entry(self, position: int, head: int) -> None:
        """Store `head` (any u16) at `avail.ring[position % size]`."""
        self.memory.write_obj(self._avail_entries[position % self.size], head & 0xFFFF)

    def set_avail_idx(self, value: int) -> None:
        """Publish the available index (RELEASE), whatever it says."""
        self.next_avail = value & 0xFFFF
        self.memory.write_atomic(self.layout.avail_idx, to_le16(self.next_avail),
                                 Ordering.RELEASE)

    def read_status(self, address: int) -> int:
        """One byte the device wrote (a request's status)."""
        return self.memory.read_obj(AlignedGuestAddress.new(ctypes.c_uint8, GuestAddress(address)))
