"""What a virtio device back-end provides to the vhost-user server (`VhostUserBackend`).

The server speaks the protocol, maps the memory and runs one thread per started queue;
the device says which features and queues it has, what its config space holds, and
turns each descriptor chain into a used length. `handle` runs on the queue's thread,
concurrently with other queues' calls: a device must make it thread-safe.
"""

from __future__ import annotations

from typing import Protocol

from vm_memory import GuestMemory
from vm_memory_virtio import DescriptorChain


class VirtioDevice(Protocol):
    """A virtio device served over vhost-user."""

    @property
    def num_queues(self) -> int:
        """How many queues the device has (GET_QUEUE_NUM)."""
        ...

    @property
    def features(self) -> int:
        """The virtio feature bits offered (device, ring and VERSION_1 bits)."""
        ...

    def config(self) -> bytes:
        """The device's config space, as the driver reads it."""
        ...

    def write_config(self, offset: int, data: bytes) -> None:
        """A driver's write to the config space; raise `VhostUserError` to refuse it."""
        ...

    def handle(self, memory: GuestMemory, chain: DescriptorChain) -> int:
        """Serve one request; return the bytes written into its writable buffers.

        Raise `VirtqueueError` when the request is so malformed that the queue needs a
        reset (there is nowhere to put a status, say).
        """
        ...
