"""FileRegion: guest memory kept in a file and reached with pread/pwrite, never mapped.

Useful for memory too large or too remote to map, or a file another program owns.
Plain access works; atomic operations are refused with `AtomicAccessUnsupported`:
pread/pwrite cannot be atomic against another process using the same file, and a
process-local lock would only pretend to be.
"""

from __future__ import annotations

import os
from typing import Any

from vm_memory.address import GuestAddress, check_u64
from vm_memory.atomic_access import AtomicTypeInfo
from vm_memory.atomic_operations import AtomicOperation
from vm_memory.errors import (
    AtomicAccessUnsupported,
    InvalidArgumentType,
    ReadOnlyRegion,
    RegionIoError,
)
from vm_memory.region import GuestMemoryRegion


class FileRegion(GuestMemoryRegion):
    """`length` bytes of an open file at `file_offset`, placed at guest `start`."""

    __slots__ = ("fd", "file_offset")

    fixed_attributes = GuestMemoryRegion.fixed_attributes | {"fd", "file_offset"}
    fd: int
    file_offset: int

    def __init__(self, fd: int, start: GuestAddress, length: int, *, file_offset: int = 0,
                 read_only: bool = False) -> None:
        if type(fd) is not int or fd < 0:
            raise InvalidArgumentType("fd", "a non-negative int (an open file descriptor)",
                                      fd)
        file_offset = check_u64(file_offset, "file_offset")
        super().__init__(start, length, read_only=read_only)
        object.__setattr__(self, "fd", fd)
        object.__setattr__(self, "file_offset", file_offset)

    @property
    def kind(self) -> str:
        return "file region (pread/pwrite)"

    def _failed(self, offset: int, length: int, error: OSError) -> RegionIoError:
        return RegionIoError.of(self.start_value + offset, length, error)

    def read_into(self, offset: int, destination: memoryview) -> None:
        done = 0
        while done < len(destination):
            try:
                count = os.preadv(self.fd, [destination[done:]],
                                  self.file_offset + offset + done)
            except OSError as error:
                raise self._failed(offset, len(destination), error) from None
            if count == 0:  # past the end of the file reads as zeros, like a sparse file
                destination[done:] = bytes(len(destination) - done)
                return
            done += count

    def write_from(self, offset: int, source: memoryview) -> None:
        if self.read_only:
            raise ReadOnlyRegion(self.start_value + offset, len(source))
        done = 0
        while done < len(source):
            try:
                count = os.pwritev(self.fd, [source[done:]], self.file_offset + offset + done)
            except OSError as error:
                raise self._failed(offset, len(source), error) from None
            if count == 0:
                raise RegionIoError(self.start_value + offset, len(source), 0,
                                    "the file accepted no bytes")
            done += count

    def atomic(self, operation: AtomicOperation, offset: int, info: AtomicTypeInfo,
               operands: tuple[int, ...], order: int, failure: int) -> Any:
        raise AtomicAccessUnsupported(
            self.start_value + offset, self.kind,
            "pread/pwrite cannot be atomic against other users of the file; map it "
            "(MmapRegion.from_file) for hardware atomics")
