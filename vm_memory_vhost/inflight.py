"""Inflight-I/O tracking (GET_INFLIGHT_FD/SET_INFLIGHT_FD): surviving a back-end crash.

The back-end keeps, in a memfd the front-end holds on to, which chains it has taken from
each queue and not yet returned. If the back-end dies, the front-end reconnects a new
one, hands it the same memfd, and the new back-end resubmits exactly those chains, in
the order they were taken: nothing is lost, and nothing already returned to the guest
is returned again.

Layout of one queue's area (back-end private; the front-end only keeps the fd): a
16-byte header (features u64, version u16, desc_num u16, last_batch_head u16, used_idx
u16) and one 16-byte state per descriptor (inflight u8, 5 bytes padding, next u16,
counter u64), the area rounded up to 64 bytes. The protocol for each chain:

1. taken from the available ring: `counter` = the next sequence number, `inflight` = 1;
2. its used entry written: `last_batch_head` = head;
3. the guest's used index published;
4. `inflight` = 0, then `used_idx` = the published index.

A crash between 3 and 4 leaves `used_idx` behind the guest's used index: the chain at
`last_batch_head` was in fact returned, and recovery clears it. The area is accessed
through the library too: a `GuestMemoryMmap` of one region, typed `read_obj`/`write_obj`.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, ClassVar, Final

from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap, GuestRegionMmap
from vm_memory_vhost.errors import VhostUserError
from vm_memory_vhost.memory import map_peer_fd

VERSION: Final = 1
_ALIGN: Final = 64


class InflightHeader(ctypes.Structure):
    _fields_: ClassVar = [("features", ctypes.c_uint64), ("version", ctypes.c_uint16),
                          ("desc_num", ctypes.c_uint16), ("last_batch_head", ctypes.c_uint16),
                          ("used_idx", ctypes.c_uint16)]
    if TYPE_CHECKING:
        features: int
        version: int
        desc_num: int
        last_batch_head: int
        used_idx: int


class DescState(ctypes.Structure):
    _fields_: ClassVar = [("inflight", ctypes.c_uint8), ("padding", ctypes.c_uint8 * 5),
                          ("next", ctypes.c_uint16), ("counter", ctypes.c_uint64)]
    if TYPE_CHECKING:
        inflight: int
        next: int
        counter: int


_PADDING: Final = (ctypes.c_uint8 * 5)()


def queue_area_size(queue_size: int) -> int:
    """Bytes of one queue's area."""
    raw = ctypes.sizeof(InflightHeader) + ctypes.sizeof(DescState) * queue_size
    return (raw + _ALIGN - 1) // _ALIGN * _ALIGN


class InflightArea:
    """The whole inflight memfd, mapped: one area per queue."""

    def __init__(self, fd: int, size: int, offset: int, num_queues: int,
                 queue_size: int) -> None:
        if num_queues <= 0 or queue_size <= 0 or \
                size < num_queues * queue_area_size(queue_size):
            raise VhostUserError("SET_INFLIGHT_FD",
                                 f"{size} bytes cannot hold {num_queues} queues of "
                                 f"{queue_size} descriptors")
        self.num_queues = num_queues
        self.queue_size = queue_size
        self.size = size
        try:
            region = GuestRegionMmap(map_peer_fd(fd, size, offset), GuestAddress(0))
            self.memory = GuestMemoryMmap([region])
        except Exception as error:
            raise VhostUserError("SET_INFLIGHT_FD", f"cannot map the inflight fd: {error}") \
                from None

    def queue(self, index: int, queue_size: int) -> InflightQueue:
        """The tracker of queue `index` (which must have the size the area was made for)."""
        if not 0 <= index < self.num_queues or queue_size != self.queue_size:
            raise VhostUserError("SET_VRING_KICK",
                                 f"queue {index} of {queue_size} descriptors is not in the "
                                 f"inflight area ({self.num_queues} queues of "
                                 f"{self.queue_size})")
        return InflightQueue(self.memory, index * queue_area_size(queue_size), queue_size)


    def pending(self, index: int) -> list[int]:
        """The heads queue `index`'s log marks in flight (read only: for inspection).

        The head at `last_batch_head` may be one whose used entry was already published
        (a back-end stopped between steps 3 and 4): recovery settles that one; every
        other head listed here is certainly unfinished.
        """
        base = index * queue_area_size(self.queue_size)
        first = AlignedGuestAddress.new(DescState,
                                        GuestAddress(base + ctypes.sizeof(InflightHeader)))
        return [head for head in range(self.queue_size)
                if self.memory.read_obj(first.offset(head)).inflight]

    def last_batch_head(self, index: int) -> int:
        """The head whose used entry queue `index` wrote last."""
        header = self.memory.read_obj(AlignedGuestAddress.new(
            InflightHeader, GuestAddress(index * queue_area_size(self.queue_size))))
        return header.last_batch_head


class InflightQueue:
    """One queue's inflight log; a `UsedTracker` for `SplitQueue.add_used`."""

    def __init__(self, memory: GuestMemoryMmap, base: int, queue_size: int) -> None:
        self.memory = memory
        self.queue_size = queue_size
        self._header = AlignedGuestAddress.new(InflightHeader, GuestAddress(base))
        header_size = ctypes.sizeof(InflightHeader)
        self._last_batch_head = AlignedGuestAddress.new(ctypes.c_uint16, GuestAddress(base + 12))
        self._used_idx = AlignedGuestAddress.new(ctypes.c_uint16, GuestAddress(base + 14))
        first = AlignedGuestAddress.new(DescState, GuestAddress(base + header_size))
        self._states = [first.offset(index) for index in range(queue_size)]
        self._flags = [AlignedGuestAddress.new(ctypes.c_uint8, GuestAddress(state.raw_value()))
                       for state in self._states]
        self.counter = 0
        header = memory.read_obj(self._header)
        if header.desc_num == 0:  # a fresh (zeroed) area
            memory.write_obj(self._header, InflightHeader(0, VERSION, queue_size, 0, 0))
        elif header.desc_num != queue_size or header.version != VERSION:
            raise VhostUserError("SET_VRING_KICK",
                                 f"inflight area holds version {header.version} with "
                                 f"{header.desc_num} descriptors, not version {VERSION} "
                                 f"with {queue_size}")

    def recover(self, guest_used_idx: int) -> list[int]:
        """Settle the log against the guest's used index; the heads to resubmit, in the
        order they were first taken."""
        header = self.memory.read_obj(self._header)
        if header.used_idx != guest_used_idx:  # died between steps 3 and 4
            if header.last_batch_head < self.queue_size:
                self.memory.write_obj(self._flags[header.last_batch_head], 0)
            self.memory.write_obj(self._used_idx, guest_used_idx)
        pending: list[tuple[int, int]] = []
        highest = 0
        for head, address in enumerate(self._states):
            state = self.memory.read_obj(address)
            highest = max(highest, state.counter)
            if state.inflight:
                pending.append((state.counter, head))
        self.counter = highest
        return [head for _, head in sorted(pending)]

    def begin(self, head: int) -> None:
        """Chain `head` was taken from the available ring."""
        self.counter += 1
        self.memory.write_obj(self._states[head], DescState(1, _PADDING, 0, self.counter))

    def before_publish(self, head: int) -> None:
        self.memory.write_obj(self._last_batch_head, head)

    def after_publish(self, head: int, used_idx: int) -> None:
        self.memory.write_obj(self._flags[head], 0)
        self.memory.write_obj(self._used_idx, used_idx)
