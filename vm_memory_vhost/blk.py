"""A virtio-blk device on an image file: IN, OUT, FLUSH, GET_ID, read-only if asked.

A request is a device-readable header (`VirtioBlkReqHeader`: type, reserved, sector),
data buffers (device-writable for IN and GET_ID, device-readable for OUT), and a last
device-writable byte for the status. Data moves zero-copy between the image and guest
memory (`file_to_guest`/`guest_to_file`: one `preadv`/`pwritev` for all of a request's
guest buffers, which releases the GIL, so queues on other threads run meanwhile).

Statuses follow the virtio spec (5.2.6): `VIRTIO_BLK_S_OK`; `VIRTIO_BLK_S_IOERR` for a
header that is too short, data on the wrong side (device-readable where it must be
writable, or the reverse), a length that is not a whole number of sectors, a range past
the end of the disk, a write to a read-only disk, a data buffer in guest memory that
cannot take it (read-only), a failing system call;
`VIRTIO_BLK_S_UNSUPP` for an unknown request type. A chain with no writable byte for
the status cannot be answered at all: that is an `InvalidChain` (the queue needs a
reset).
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import TYPE_CHECKING, ClassVar, Final

from vm_memory import (
    GuestAddress,
    GuestMemory,
    GuestMemoryError,
    Le32,
    Le64,
)
from vm_memory_vhost.errors import VhostUserError
from vm_memory_virtio import (
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    DescriptorChain,
    InvalidChain,
    feature,
    file_to_guest,
    guest_to_file,
    last_byte,
    read_struct,
    skip,
    take,
    write_bytes,
)

SECTOR: Final = 512
VIRTIO_BLK_T_IN: Final = 0
VIRTIO_BLK_T_OUT: Final = 1
VIRTIO_BLK_T_FLUSH: Final = 4
VIRTIO_BLK_T_GET_ID: Final = 8
VIRTIO_BLK_S_OK: Final = 0
VIRTIO_BLK_S_IOERR: Final = 1
VIRTIO_BLK_S_UNSUPP: Final = 2
VIRTIO_BLK_ID_BYTES: Final = 20

VIRTIO_BLK_F_SEG_MAX: Final = 2
VIRTIO_BLK_F_RO: Final = 5
VIRTIO_BLK_F_BLK_SIZE: Final = 6
VIRTIO_BLK_F_FLUSH: Final = 9
VIRTIO_BLK_F_TOPOLOGY: Final = 10
VIRTIO_BLK_F_MQ: Final = 12

SEG_MAX: Final = 1022
"""The most data segments per request (as qemu-storage-daemon: a 1024 queue - 2)."""

# struct virtio_blk_config up to num_queues: capacity, size_max, seg_max, geometry
# (cylinders, heads, sectors), blk_size, physical_block_exp, alignment_offset,
# min_io_size, opt_io_size, writeback, unused0, num_queues.
_CONFIG: Final = struct.Struct("<QIIHBBIBBHIBBH")


_STATUS_BYTES: Final = {status: bytes([status]) for status in
                        (VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP)}


class VirtioBlkReqHeader(ctypes.Structure):
    """The request header the driver puts first."""

    _fields_: ClassVar = [("type", Le32), ("reserved", Le32), ("sector", Le64)]
    if TYPE_CHECKING:
        type: int
        reserved: int
        sector: int


HEADER_BYTES: Final = ctypes.sizeof(VirtioBlkReqHeader)


class BlkDevice:
    """A virtio-blk device backed by an image file (a `VirtioDevice`)."""

    def __init__(self, image: str, *, read_only: bool = False, num_queues: int = 1,
                 serial: str | None = None) -> None:
        if num_queues < 1 or num_queues > 0xFFFF:
            raise ValueError(f"{num_queues} queues: a device has 1 to 65535")
        self.read_only = read_only
        self._num_queues = num_queues
        self.fd = os.open(image, os.O_RDONLY if read_only else os.O_RDWR)
        self.capacity = os.fstat(self.fd).st_size // SECTOR
        name = serial if serial is not None else os.path.basename(image)
        self.serial = name.encode()[:VIRTIO_BLK_ID_BYTES]

    @property
    def num_queues(self) -> int:
        return self._num_queues

    @property
    def features(self) -> int:
        bits = (VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_RING_F_EVENT_IDX,
                VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH,
                VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_MQ)
        mask = 0
        for bit in bits:
            mask |= feature(bit)
        if self.read_only:
            mask |= feature(VIRTIO_BLK_F_RO)
        return mask

    def config(self) -> bytes:
        return _CONFIG.pack(self.capacity, 0, SEG_MAX, 0, 0, 0, SECTOR, 0, 0, 1, 0, 1, 0,
                            self._num_queues)

    def write_config(self, offset: int, data: bytes) -> None:
        raise VhostUserError("SET_CONFIG", f"the config space is read-only (write of "
                                           f"{len(data)} bytes at {offset})")

    def close(self) -> None:
        os.close(self.fd)

    def handle(self, memory: GuestMemory, chain: DescriptorChain) -> int:
        """Serve one request; returns the used length (data written + the status byte)."""
        status_at = last_byte(chain.writable)
        if status_at is None:
            raise InvalidChain(-1, chain.head, chain.head,
                               "no device-writable byte for the request status")
        try:  # first, so that a status the guest cannot receive moves nothing
            memory.write_slice(GuestAddress(status_at), _STATUS_BYTES[VIRTIO_BLK_S_IOERR])
        except GuestMemoryError as error:
            raise InvalidChain(-1, chain.head, chain.head,
                               f"the status byte cannot be written: {error}") from None
        data_out = take(chain.writable, chain.writable_bytes - 1)
        status, written = self._serve(memory, chain, data_out)
        memory.write_slice(GuestAddress(status_at), _STATUS_BYTES[status])
        return written + 1

    def _serve(self, memory: GuestMemory, chain: DescriptorChain,
               data_out: list[tuple[int, int]]) -> tuple[int, int]:
        """(status, bytes written before the status byte)."""
        if chain.readable_bytes < HEADER_BYTES:
            return VIRTIO_BLK_S_IOERR, 0
        header = read_struct(memory, chain.readable, VirtioBlkReqHeader)
        kind = header.type
        data_in = skip(chain.readable, HEADER_BYTES)
        out_bytes = chain.writable_bytes - 1
        in_bytes = chain.readable_bytes - HEADER_BYTES
        try:
            if kind == VIRTIO_BLK_T_IN:
                if in_bytes or not self._in_range(header.sector, out_bytes):
                    return VIRTIO_BLK_S_IOERR, 0
                done = file_to_guest(memory, data_out, self.fd, header.sector * SECTOR)
                return (VIRTIO_BLK_S_OK if done == out_bytes else VIRTIO_BLK_S_IOERR), done
            if kind == VIRTIO_BLK_T_OUT:
                if self.read_only or out_bytes or not self._in_range(header.sector, in_bytes):
                    return VIRTIO_BLK_S_IOERR, 0
                done = guest_to_file(memory, data_in, self.fd, header.sector * SECTOR)
                return (VIRTIO_BLK_S_OK if done == in_bytes else VIRTIO_BLK_S_IOERR), 0
            if kind == VIRTIO_BLK_T_FLUSH:
                if not self.read_only:
                    os.fdatasync(self.fd)
                return VIRTIO_BLK_S_OK, 0
            if kind == VIRTIO_BLK_T_GET_ID:
                if in_bytes:
                    return VIRTIO_BLK_S_IOERR, 0
                identity = self.serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0")
                done = write_bytes(memory, data_out, identity[:out_bytes])
                return VIRTIO_BLK_S_OK, done
        except (OSError, GuestMemoryError):  # the file failed, or a buffer the guest
            return VIRTIO_BLK_S_IOERR, 0   # gave is not writable memory: nothing moved
        return VIRTIO_BLK_S_UNSUPP, 0

    def _in_range(self, sector: int, length: int) -> bool:
        return length % SECTOR == 0 and sector * SECTOR + length <= self.capacity * SECTOR
