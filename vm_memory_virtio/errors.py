"""Typed errors for hostile or broken virtqueues: each carries the facts that condemn it.

A `VirtqueueError` means one side broke the ring protocol in a way no single request
status can report. For a device, the driver: an index ran ahead, a chain loops, a buffer
lies outside guest memory... For `DriverQueue`, the device: it returned what was not in
flight. The device must stop using the queue and ask for a reset: virtio's
DEVICE_NEEDS_RESET, or in vhost-user a signal on the queue's error eventfd.
"""

from __future__ import annotations

from vm_memory import GuestMemoryError


class VirtqueueError(GuestMemoryError):
    """A side broke the split-ring protocol; the queue needs a reset."""

    def __init__(self, queue: int, reason: str) -> None:
        self.queue = queue
        self.reason = reason
        self._init_args = (queue, reason)
        super().__init__(f"virtqueue {queue}: {reason}; the queue needs a reset")


class InvalidQueueLayout(VirtqueueError):
    """The queue's size or ring addresses are unusable (alignment, size, not in memory)."""


class InvalidAvailIndex(VirtqueueError):
    """The available index ran further ahead of the device than the queue has entries."""

    def __init__(self, queue: int, avail_idx: int, next_avail: int, size: int) -> None:
        self.avail_idx = avail_idx
        self.next_avail = next_avail
        self.size = size
        super().__init__(queue, f"available index {avail_idx} is "
                                f"{(avail_idx - next_avail) & 0xFFFF} entries ahead of "
                                f"{next_avail}, more than the queue size {size}")
        self._init_args = (queue, avail_idx, next_avail, size)


class InvalidChain(VirtqueueError):
    """A descriptor chain is malformed: a loop, an index past its table, a buffer outside
    guest memory, a nested or misused indirect table, a readable after a writable."""

    def __init__(self, queue: int, head: int, index: int, reason: str) -> None:
        self.head = head
        self.index = index
        self.chain_reason = reason
        super().__init__(queue, f"chain from head {head}, descriptor {index}: {reason}")
        self._init_args = (queue, head, index, reason)


class InvalidUsedEntry(VirtqueueError):
    """The device returned a head that is not in flight, or its used index ran further
    ahead of the driver than there are chains in flight (seen by `DriverQueue`)."""

    def __init__(self, queue: int, head: int, reason: str) -> None:
        self.head = head
        self.used_reason = reason
        super().__init__(queue, f"used entry for head {head}: {reason}")
        self._init_args = (queue, head, reason)
