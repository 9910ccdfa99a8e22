"""Sharing guest memory with another process: the vhost-user way.

The owner sends its memory table — each region's guest start, size, file offset and
read-only flag — with the regions' file descriptors attached (SCM_RIGHTS) over a Unix
socket; the receiver maps the same files and builds its own `GuestMemoryMmap`, so both
processes access the same physical pages (atomics included).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass

from vm_memory.address import GuestAddress
from vm_memory.errors import GuestMemoryError
from vm_memory.mmap_memory import GuestMemoryMmap
from vm_memory.mmap_region import GuestRegionMmap, MmapRegion

MAX_REGIONS = 253
"""Most fds one SCM_RIGHTS message may carry on Linux (SCM_MAX_FD)."""
_MAX_TABLE_BYTES = 1 << 16


class NotShareable(GuestMemoryError):
    """A region has no file behind it (anonymous memory), so it cannot be shared."""

    def __init__(self, start: int) -> None:
        self.start = start
        self._init_args = (start,)
        super().__init__(f"region at {start:#x} is anonymous memory with no fd to share; "
                         "build shared memory with from_ranges_memfd or from a file")


@dataclass(frozen=True)
class RegionDescriptor:
    """One row of the memory table: where the region is and where its bytes are."""

    guest_start: int
    size: int
    file_offset: int
    read_only: bool


def memory_table(memory: GuestMemoryMmap) -> tuple[list[RegionDescriptor], list[int]]:
    """The table and fds describing `memory` (the fds stay owned by the regions)."""
    rows: list[RegionDescriptor] = []
    fds: list[int] = []
    for region in memory.regions():
        mapping = region.mapping
        if mapping.fd is None or not mapping.shared:
            raise NotShareable(region.start_value)
        rows.append(RegionDescriptor(region.start_value, region.length, mapping.file_offset,
                                     region.read_only))
        fds.append(mapping.fd)
    return rows, fds


def send_memory(sock: socket.socket, memory: GuestMemoryMmap) -> None:
    """Send `memory`'s table and fds over a connected Unix socket."""
    rows, fds = memory_table(memory)
    if len(fds) > MAX_REGIONS:
        raise ValueError(f"{len(fds)} regions: one message carries at most {MAX_REGIONS}")
    payload = json.dumps([asdict(row) for row in rows]).encode()
    socket.send_fds(sock, [len(payload).to_bytes(4, "little") + payload], fds)


def receive_memory(sock: socket.socket) -> GuestMemoryMmap:
    """Receive a memory table and fds from `send_memory` and map them here."""
    data, fds, _, _ = socket.recv_fds(sock, _MAX_TABLE_BYTES, MAX_REGIONS)
    try:
        length = int.from_bytes(data[:4], "little")
        rows = [RegionDescriptor(**row) for row in json.loads(data[4:4 + length])]
        if len(rows) != len(fds):
            raise ValueError(f"memory table has {len(rows)} regions but {len(fds)} fds came")
        return GuestMemoryMmap(
            GuestRegionMmap(MmapRegion.from_file(fd, row.size, offset=row.file_offset,
                                                 read_only=row.read_only),
                            GuestAddress(row.guest_start))
            for row, fd in zip(rows, fds, strict=True))
    finally:
        for fd in fds:  # from_file keeps its own duplicates
            os.close(fd)
