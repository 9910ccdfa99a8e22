"""FileRegion: guest memory kept in a file and reached with pread/pwrite, never mapped.

Useful for memory too large or too remote to map, or a file another program owns.
Plain access works; atomic operations are refused with `AtomicAccessUnsupported`:
pread/pwrite cannot be atomic against another process using the same file, and a
process-local lock would only pretend to be.
"""

from __future__ import annotations

import os

from vm_memory.address import GuestAddress
from vm_memory.errors import AtomicAccessUnsupported, ReadOnlyRegion
from vm_memory.region import GuestMemoryRegion


class FileRegion(GuestMemoryRegion):
    """`length` bytes of an open file at `file_offset`, placed at guest `start`."""

    __slots__ = ("fd", "file_offset")

    def __init__(self, fd: int, start: GuestAddress, length: int, *, file_offset: int = 0,
                 read_only: bool = False) -> None:
        super().__init__(start, length, read_only=read_only)
        self.fd = fd
        self.file_offset = file_offset

    @property
    def kind(self) -> str:
        return "file region (pread/pwrite)"

    def read_into(self, offset: int, destination: memoryview) -> None:
        done = 0
        while done < len(destination):
            count = os.preadv(self.fd, [destination[done:]], self.file_offset + offset + done)
            if count == 0:  # past the end of the file reads as zeros, like a sparse file
                destination[done:] = bytes(len(destination) - done)
                return
            done += count

    def write_from(self, offset: int, source: memoryview) -> None:
        if self.read_only:
            raise ReadOnlyRegion(self.start_value + offset, len(source))
        done = 0
        while done < len(source):
            done += os.pwritev(self.fd, [source[done:]], self.file_offset + offset + done)

    def _unsupported(self, offset: int) -> AtomicAccessUnsupported:
        return AtomicAccessUnsupported(
            self.start_value + offset, self.kind,
            "pread/pwrite cannot be atomic against other users of the file; map it "
            "(MmapRegion.from_file) for hardware atomics")
