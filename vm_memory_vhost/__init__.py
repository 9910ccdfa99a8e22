"""A vhost-user back-end on `vm_memory`: the protocol, guest memory from the front-end's
memory table, crash-recoverable queues, and a virtio-blk device.

`VhostUserBackend(device).serve(path)` serves any `VirtioDevice`; `BlkDevice` is a
virtio-blk disk on an image file (the `vm-memory vhost-user-blk` command). `Frontend`
is a minimal front-end for tests.
"""

from vm_memory_vhost.backend import PROTOCOL_FEATURES, VhostUserBackend
from vm_memory_vhost.blk import BlkDevice, VirtioBlkReqHeader
from vm_memory_vhost.device import VirtioDevice
from vm_memory_vhost.errors import (
    MalformedMessage,
    StopRequested,
    UnmappedAddress,
    VhostUserError,
)
from vm_memory_vhost.memory import MemoryTable, map_peer_fd
from vm_memory_vhost.protocol import Connection, Message, ProtocolFeature, Request
from vm_memory_vhost.stop import StopRequest

__all__ = [
    "PROTOCOL_FEATURES",
    "BlkDevice",
    "Connection",
    "MalformedMessage",
    "MemoryTable",
    "Message",
    "ProtocolFeature",
    "Request",
    "StopRequest",
    "StopRequested",
    "UnmappedAddress",
    "VhostUserBackend",
    "VhostUserError",
    "VirtioBlkReqHeader",
    "VirtioDevice",
    "map_peer_fd",
]
