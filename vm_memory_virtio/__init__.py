"""Split virtqueues on `vm_memory`'s guest memory, for virtio device back-ends.

The device side (`SplitQueue`) pops checked descriptor chains (direct and indirect,
`VIRTIO_F_VERSION_1` little-endian layout) from the available ring, returns them on the
used ring, and decides notifications with or without `VIRTIO_RING_F_EVENT_IDX`. Ring
indices are hardware atomics with the orderings the virtio spec requires; descriptors
and used entries are `read_obj`/`write_obj` on explicit-endian Structures; payloads move
zero-copy between guest memory and files (`file_to_guest`, `guest_to_file`).

Guest-written input is hostile: a chain that loops, runs past its table, nests indirect
tables or points outside guest memory raises a `VirtqueueError` (the queue needs a
reset) before any request sees it.

The driver side (`DriverQueue`) builds honest and hostile tables, for tests.
"""

from vm_memory_virtio.chain import (
    DescriptorChain,
    Segment,
    coalesce,
    file_to_guest,
    guest_to_file,
    last_byte,
    read_struct,
    skip,
    take,
    write_bytes,
)
from vm_memory_virtio.driver import DriverQueue
from vm_memory_virtio.errors import (
    InvalidAvailIndex,
    InvalidChain,
    InvalidQueueLayout,
    InvalidUsedEntry,
    VirtqueueError,
)
from vm_memory_virtio.layout import (
    DESC_SIZE,
    MAX_QUEUE_SIZE,
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_F_NO_NOTIFY,
    QueueLayout,
    VirtqDesc,
    VirtqUsedElem,
    avail_ring_bytes,
    feature,
    to_le16,
    used_ring_bytes,
)
from vm_memory_virtio.queue import SplitQueue, UsedTracker

__all__ = [
    "DESC_SIZE",
    "MAX_QUEUE_SIZE",
    "VIRTIO_F_VERSION_1",
    "VIRTIO_RING_F_EVENT_IDX",
    "VIRTIO_RING_F_INDIRECT_DESC",
    "VIRTQ_AVAIL_F_NO_INTERRUPT",
    "VIRTQ_DESC_F_INDIRECT",
    "VIRTQ_DESC_F_NEXT",
    "VIRTQ_DESC_F_WRITE",
    "VIRTQ_USED_F_NO_NOTIFY",
    "DescriptorChain",
    "DriverQueue",
    "InvalidAvailIndex",
    "InvalidChain",
    "InvalidQueueLayout",
    "InvalidUsedEntry",
    "QueueLayout",
    "Segment",
    "SplitQueue",
    "UsedTracker",
    "VirtqDesc",
    "VirtqUsedElem",
    "VirtqueueError",
    "avail_ring_bytes",
    "coalesce",
    "feature",
    "file_to_guest",
    "guest_to_file",
    "last_byte",
    "read_struct",
    "skip",
    "take",
    "to_le16",
    "used_ring_bytes",
    "write_bytes",
]
