"""Host-backed regions: guest memory in a Python `mmap`.

`MmapRegion` is one mapping (anonymous private or shared, memfd, or a file at an
offset, optionally read-only). It pins the mapping with a buffer export for as long as
it lives, so the memory can never be unmapped under an access: `mmap.close()` and
`resize()` raise `BufferError` while the pin is held, and every view handed out keeps
the mapping alive. `GuestRegionMmap` places a mapping at a guest address.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import weakref
from dataclasses import dataclass
from typing import Final

from vm_memory.address import GuestAddress
from vm_memory.errors import InvalidRange, MappingError, MappingPastEof, RegionInUse
from vm_memory.region import GuestMemoryRegion

PAGE_SIZE: Final = mmap.PAGESIZE

MAP_NORESERVE: Final = getattr(mmap, "MAP_NORESERVE", 0x4000)
MAP_HUGETLB: Final = getattr(mmap, "MAP_HUGETLB", 0x40000)
_MEMFD_SEALS: Final = getattr(os, "F_SEAL_SHRINK", 0x2) | getattr(os, "F_SEAL_GROW", 0x4)
_F_ADD_SEALS: Final = getattr(os, "F_ADD_SEALS", 1033)


@dataclass(frozen=True)
class FileOffset:
    """An open file and the offset in it where a region's bytes start."""

    fd: int
    offset: int = 0


class _PyBuffer(ctypes.Structure):
    """CPython's `Py_buffer`, to hold a buffer export and read its address."""

    _fields_ = (
        ("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)
_release_buffer.restype = None


def _pin(mapping: mmap.mmap) -> tuple[_PyBuffer, int]:
    """Take a buffer export of `mapping` (works for read-only maps too) and its address."""
    export = _PyBuffer()
    if _get_buffer(mapping, ctypes.byref(export), 0) != 0:  # PyBUF_SIMPLE
        raise MappingError(len(mapping), "the mapping refused a buffer export")
    assert export.buf is not None
    return export, export.buf


def _unpin(pins: list[_PyBuffer], fd: int | None) -> None:
    """Release the pin (if still held) and close the fd we own."""
    while pins:
        _release_buffer(ctypes.byref(pins.pop()))
    if fd is not None:
        os.close(fd)


class MmapRegion:
    """One host mapping: its `mmap`, a byte view, host address and backing file."""

    __slots__ = ("__weakref__", "_finalizer", "_pins", "fd", "file_offset", "host_address",
                 "mapping", "read_only", "shared", "size", "view")

    def __init__(self, mapping: mmap.mmap, *, read_only: bool, shared: bool,
                 fd: int | None = None, file_offset: int = 0, owns_fd: bool = False) -> None:
        """Wrap an existing mapping; prefer the `anonymous`, `memfd`, `from_file` builders."""
        self.mapping = mapping
        self.size = len(mapping)
        self.read_only = read_only
        self.shared = shared
        self.fd = fd
        self.file_offset = file_offset
        export, self.host_address = _pin(mapping)
        self.view = memoryview(mapping).cast("B")
        self._pins = [export]
        self._finalizer = weakref.finalize(self, _unpin, self._pins, fd if owns_fd else None)

    @classmethod
    def anonymous(cls, size: int, *, shared: bool = False, no_reserve: bool = False,
                  huge_pages: bool = False) -> MmapRegion:
        """Zero-filled anonymous memory, private to this process (or shared with children).

        `no_reserve` maps without reserving swap (MAP_NORESERVE): a huge sparse guest
        commits only the pages it touches. `huge_pages` asks for hugetlbfs pages
        (MAP_HUGETLB); the host must have some reserved.
        """
        _check_size(size)
        flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
        if no_reserve:
            flags |= MAP_NORESERVE
        if huge_pages:
            flags |= MAP_HUGETLB
        try:
            mapping = mmap.mmap(-1, size, flags=flags)
        except OSError as error:
            reason = error.strerror or str(error)
            if huge_pages:
                reason += ("; huge pages need a reservation: see /proc/sys/vm/nr_hugepages "
                           "and the size must be a multiple of the huge page size")
            raise MappingError(size, reason) from None
        return cls(mapping, read_only=False, shared=shared)

    @classmethod
    def memfd(cls, size: int, *, name: str = "guest-memory") -> MmapRegion:
        """Shared memory in a new memfd, sealed against shrinking and growing.

        The seals mean a peer that receives the fd cannot truncate it under us (which
        would turn our accesses into SIGBUS).
        """
        _check_size(size)
        fd = os.memfd_create(name, os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 2))
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, _F_ADD_SEALS, _MEMFD_SEALS)
            mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        except OSError as error:
            os.close(fd)
            raise MappingError(size, error.strerror or str(error)) from None
        return cls(mapping, read_only=False, shared=True, fd=fd, owns_fd=True)

    @classmethod
    def from_file(cls, fd: int, size: int, *, offset: int = 0, read_only: bool = False,
                  shared: bool = True) -> MmapRegion:
        """Map `size` bytes of an open file at `offset` (a multiple of the page size).

        The fd is duplicated, so the caller may close its own. A file shorter than
        `offset + size` is refused before mapping (touching past its end is SIGBUS).
        """
        _check_size(size)
        if offset < 0 or offset % mmap.ALLOCATIONGRANULARITY:
            raise InvalidRange(offset, size, f"the file offset must be a multiple of "
                                             f"{mmap.ALLOCATIONGRANULARITY}")
        file_size = os.fstat(fd).st_size
        if file_size < offset + size:
            raise MappingPastEof(size, offset, file_size)
        own = os.dup(fd)
        flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
        prot = mmap.PROT_READ | (0 if read_only else mmap.PROT_WRITE)
        try:
            mapping = mmap.mmap(own, size, flags=flags, prot=prot, offset=offset)
        except OSError as error:
            os.close(own)
            raise MappingError(size, error.strerror or str(error)) from None
        return cls(mapping, read_only=read_only, shared=shared, fd=own, file_offset=offset,
                   owns_fd=True)

    @property
    def closed(self) -> bool:
        """Whether `close` has unmapped the memory."""
        return not self._finalizer.alive

    def close(self) -> None:
        """Unmap now (normally the mapping lives as long as anything refers to it).

        Raises `BufferError`, with the mapping still mapped and pinned (and `view`
        replaced by a fresh one), while anything else holds a buffer of it.
        """
        if not self._finalizer.alive:
            return
        _unpin(self._pins, None)
        self.view.release()
        try:
            self.mapping.close()
        except BufferError:
            export, address = _pin(self.mapping)
            assert address == self.host_address
            self._pins.append(export)
            self.view = memoryview(self.mapping).cast("B")
            raise
        self._finalizer()

    def __repr__(self) -> str:
        backing = "anonymous" if self.fd is None else f"fd {self.fd}@{self.file_offset:#x}"
        return f"MmapRegion({self.size:#x} bytes, {backing}, shared={self.shared})"


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size <= 0:
        raise InvalidRange(0, size if isinstance(size, int) else -1,
                           "a mapping needs a positive size")


class GuestRegionMmap(GuestMemoryRegion):
    """A mapping placed at a guest physical address."""

    __slots__ = ("mapping",)

    def __init__(self, mapping: MmapRegion, start: GuestAddress) -> None:
        if mapping.closed:
            raise MappingError(mapping.size, "the mapping is closed")
        super().__init__(start, mapping.size, read_only=mapping.read_only,
                         buffer=mapping.view, host_address=mapping.host_address)
        self.mapping = mapping

    @property
    def closed(self) -> bool:
        return self.mapping.closed

    def close(self) -> None:
        """Unmap the region now; refused with `RegionInUse` while a memory object, a view
        or an exported buffer still holds it (they would otherwise touch unmapped memory).
        """
        users = len(self.users)
        if users:
            raise RegionInUse(self.start_value, users)
        self.release_typed_views()
        try:
            self.mapping.close()
        except BufferError:
            self.buffer = self.mapping.view
            raise RegionInUse(self.start_value, 0, exported_buffers=True) from None
        self.buffer = None
        self.host_address = None
        self._derive_fast_paths()

    @property
    def kind(self) -> str:
        return "host-backed mmap region"
