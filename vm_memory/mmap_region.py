"""Host-backed regions: guest memory in a Python `mmap`.

`MmapRegion` is one mapping (anonymous private or shared, memfd, or a file at an
offset, optionally read-only). It pins the mapping with a buffer export for as long as
it lives, so the memory can never be unmapped under an access: `mmap.close()` and
`resize()` raise `BufferError` while the pin is held, and every view handed out keeps
the mapping alive. `GuestRegionMmap` places a mapping at a guest address; one mapping
may be placed more than once (a hot-plug move), and an explicit close is refused while
any memory object holds any of its placements.

SIGBUS: touching a page of a file mapping past the file's end, or a page a full
filesystem cannot supply, kills the process. So memfds made here are sealed against
shrinking, growing and further seals and allocated up front (unless `sparse`); writable
shared file mappings are allocated up front (unless `sparse`); a file shorter than the
range is refused before mapping; and an fd from a peer must be sealed against shrinking
(`from_peer_fd`) unless the caller vouches for the peer. What stays the caller's duty:
nobody may truncate a file mapped with `from_file` (or a `trust_unsealed` peer fd) while
it is mapped, and `sparse` memory must find room when it is first written.
"""
# pyright: reportPrivateUsage=false

from __future__ import annotations

import fcntl
import mmap
import operator
import os
import platform
import stat
import sys
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, islice, repeat
from operator import add, attrgetter, is_, le, sub
from typing import Final, cast

from vm_memory.address import GuestAddress
from vm_memory.buffers import BufferExport, export_buffer, release_buffer
from vm_memory.bulk import each, make_each, slot_setter
from vm_memory.errors import (
    InvalidArgumentType,
    InvalidRange,
    MappingError,
    MappingPastEof,
    RegionInUse,
    UnsealedMemory,
)
from vm_memory.implementation import compiled
from vm_memory.lifetime import holders_of, holders_of_host_memory, lifetime_lock
from vm_memory.region import (
    _FIXED,
    _NO_TYPED_VIEWS,
    GuestMemoryRegion,
    _checked_flag,
    _checked_span,
)

PAGE_SIZE: Final = mmap.PAGESIZE



_GENERIC_MAP_FLAGS: Final = (0x4000, 0x40000)
"""asm-generic/mman.h and mman-common.h: x86, ARM, arm64, s390, RISC-V, LoongArch, ..."""
_LINUX_MAP_FLAGS: Final[tuple[tuple[tuple[str, ...], tuple[int, int]], ...]] = (
    # (prefixes of `platform.machine()`, (MAP_NORESERVE, MAP_HUGETLB)), from each
    # architecture's uapi asm/mman.h; the first matching prefix wins.
    (("x86_64", "i386", "i486", "i586", "i686", "aarch64", "arm", "s390", "riscv",
      "loongarch", "m68k", "sh", "ia64", "arc", "csky", "hexagon", "nios2", "openrisc",
      "microblaze"), _GENERIC_MAP_FLAGS),
    (("mips", "xtensa"), (0x0400, 0x80000)),
    (("ppc", "powerpc", "sparc"), (0x0040, 0x40000)),
    (("alpha",), (0x10000, 0x100000)),
    (("parisc",), (0x4000, 0x80000)),
)


def _linux_map_flags(machine: str) -> tuple[int, int] | tuple[None, None]:
    """(MAP_NORESERVE, MAP_HUGETLB) on this Linux architecture, or (None, None) for one
    this table does not know: Python's `mmap` module does not export them before 3.13,
    and MIPS, Xtensa, POWER, SPARC, Alpha and PA-RISC use their own values (on MIPS
    x86's 0x4000 is MAP_EXECUTABLE and 0x40000 MAP_STACK), so a guess could silently
    ask for something else."""
    for prefixes, flags in _LINUX_MAP_FLAGS:
        if machine.startswith(prefixes):
            return flags
    return None, None


_NORESERVE, _HUGETLB = _linux_map_flags(platform.machine())
MAP_NORESERVE: Final[int | None] = getattr(mmap, "MAP_NORESERVE", _NORESERVE)
MAP_HUGETLB: Final[int | None] = getattr(mmap, "MAP_HUGETLB", _HUGETLB)


def _known_flag(name: str, value: int | None, size: int, instead: str) -> int:
    """`value`, or a MappingError saying the flag's value here is unknown."""
    if value is None:
        raise MappingError(size, f"{name}'s value on {platform.machine()} is unknown (Python's "
                                 f"mmap does not export it and vm-memory's table lacks this "
                                 f"architecture); {instead}")
    return value


F_SEAL_SEAL: Final = getattr(fcntl, "F_SEAL_SEAL", 0x1)
F_SEAL_SHRINK: Final = getattr(fcntl, "F_SEAL_SHRINK", 0x2)
F_SEAL_GROW: Final = getattr(fcntl, "F_SEAL_GROW", 0x4)
_F_ADD_SEALS: Final = getattr(fcntl, "F_ADD_SEALS", 1033)
_F_GET_SEALS: Final = getattr(fcntl, "F_GET_SEALS", 1034)
MAX_MAPPING_SIZE: Final = sys.maxsize
"""The largest mapping `mmap` can make (its length is a C `ssize_t`)."""


@dataclass(frozen=True)
class FileOffset:
    """An open file and the offset in it where a region's bytes start."""

    fd: int
    offset: int = 0

    def __post_init__(self) -> None:
        if type(self.fd) is not int or self.fd < 0:
            raise InvalidArgumentType("FileOffset.fd", "a non-negative int (an open fd)",
                                      self.fd)
        if type(self.offset) is not int:
            raise InvalidArgumentType("FileOffset.offset", "an int", self.offset)
        if self.offset < 0:
            raise InvalidRange(self.offset, 0, "a file offset cannot be negative")


def _pin(mapping: mmap.mmap) -> tuple[BufferExport, int]:
    """Take a buffer export of `mapping` (works for read-only maps too) and its address."""
    export = export_buffer(mapping)
    if export is None:
        raise MappingError(len(mapping), "the mapping refused a buffer export")
    return export, export.address


def _unpin(pins: list[BufferExport], fd: int | None) -> None:
    """Release the pin (if still held) and close the fd we own."""
    while pins:
        release_buffer(pins.pop())
    if fd is not None:
        os.close(fd)


def _check_size(size: object) -> int:
    if type(size) is not int:
        raise InvalidArgumentType("a mapping's size", "an int", size)
    if not 0 < size <= MAX_MAPPING_SIZE:
        raise InvalidRange(0, size, f"a mapping needs a size in [1, {MAX_MAPPING_SIZE}]")
    return size


def _checked_sizes(sizes: Iterable[object]) -> list[int]:
    """`sizes` as a list of mapping sizes, each checked as `_check_size` does (all at
    once when every one is a plain int in range: the common case costs no call each)."""
    given = list(sizes)
    if set(map(type, given)) <= {int}:
        ints = cast("list[int]", given)
        if not ints or (min(ints) > 0 and max(ints) <= MAX_MAPPING_SIZE):
            return ints
    return [_check_size(size) for size in given]


def _check_fd(fd: object) -> int:
    if type(fd) is not int or fd < 0:
        raise InvalidArgumentType("fd", "a non-negative int (an open file descriptor)", fd)
    return fd


def _check_file_offset(offset: object, size: int) -> int:
    if type(offset) is not int:
        raise InvalidArgumentType("a file offset", "an int", offset)
    if offset < 0 or offset % mmap.ALLOCATIONGRANULARITY:
        raise InvalidRange(offset, size, f"the file offset must be a non-negative multiple "
                                         f"of {mmap.ALLOCATIONGRANULARITY}")
    return offset


def _check_available(size: int) -> None:
    """Refuse to allocate more than the host has available now (free RAM and swap, from
    /proc/meminfo): a memfd has no size limit of its own, and filling one past that gets
    the process killed by the kernel's OOM killer instead of an error. Where meminfo
    cannot be read, the allocation itself decides."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        available = sum(int(fields[key].split()[0]) * 1024
                        for key in ("MemAvailable", "SwapFree"))
    except (OSError, KeyError, ValueError, IndexError):
        return
    if size > available:
        raise MappingError(size, f"the host has {available} bytes of memory and swap "
                                 "available (sparse=True allocates as it is written)")


def _oserror(size: int, error: OSError) -> MappingError:
    return MappingError(size, error.strerror or str(error))


def _shrunk_meanwhile(fd: int, size: int, offset: int) -> MappingError:
    """The refusal when `mmap` finds the file shorter than our check did a moment before
    (its owner truncated it in between)."""
    try:
        file_size = os.fstat(fd).st_size
    except OSError as error:
        return _oserror(size, error)
    if file_size < offset + size:
        return MappingPastEof(size, offset, file_size)
    return MappingError(size, f"the file was shorter than offset {offset} + size {size} "
                              "when mapped (truncated and grown again meanwhile)")


def file_seals(fd: int) -> int:
    """The memfd seals of `fd` (0 for a file that cannot carry seals)."""
    try:
        return fcntl.fcntl(fd, _F_GET_SEALS)
    except OSError:
        return 0


def _is_memfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
    except OSError:
        return False


class _WeakLedger:
    """The regions placed on one mapping, by weak reference (the compiled path's
    `Ledger` does the same with a borrowed pointer each, cleared when a region goes)."""

    __slots__ = ("_references",)

    def __init__(self) -> None:
        self._references: list[weakref.ref[GuestRegionMmap]] = []

    def add(self, regions: list[GuestRegionMmap], /) -> None:
        """Record each of `regions`."""
        references = self._references
        count = len(references)
        if count >= 16 and not count & (count - 1):  # forget the regions gone, now and then
            references[:] = [reference for reference in references if reference() is not None]
        references.extend(each(weakref.ref, regions))

    def live(self) -> list[GuestRegionMmap]:
        """The regions recorded that are still alive, in the order they were added."""
        return [region for reference in self._references
                if (region := reference()) is not None]


class MmapRegion:
    """One host mapping: its `mmap`, a byte view, host address and backing file.

    `read_only`, the mapping, its view and host address are fixed at construction.
    """

    __slots__ = ("__weakref__", "_base", "_finalizer", "_pins", "_placements", "_windows",
                 "fd", "file_offset", "host_address", "mapping", "offset", "read_only",
                 "shared", "size", "view")

    _FIXED: Final = frozenset({"mapping", "read_only", "host_address", "view", "size", "fd",
                               "file_offset", "shared", "offset"})

    fd: int | None
    file_offset: int
    host_address: int
    mapping: mmap.mmap
    """The `mmap` holding the bytes: this mapping's alone, or for a window (see
    `anonymous_windows`) the whole shared one, of which this is `[offset, offset + size)`."""
    offset: int
    """Where this mapping's bytes start in `mapping` (0 unless it is a window)."""
    read_only: bool
    shared: bool
    size: int
    view: memoryview
    """A byte view of exactly this mapping's `size` bytes."""
    _base: MmapRegion | None
    """For a window, the hidden mapping that owns the `mmap`; None for an owner. Only
    an owner has (and its methods read) `_pins`, `_finalizer`, `_placements` and
    `_windows`: a window never sets them."""
    _placements: _WeakLedger | None
    """At an owner, the regions placed on its `mmap`, not kept alive (made on the first
    placement); None at a window."""
    _windows: list[weakref.ref[MmapRegion]] | None
    """For an owner split into windows, weak references to them; None otherwise."""

    def __init__(self, mapping: mmap.mmap, *, read_only: bool, shared: bool,
                 fd: int | None = None, file_offset: int = 0, owns_fd: bool = False) -> None:
        """Wrap an existing mapping; prefer the `anonymous`, `memfd`, `from_file` builders.

        `read_only` must agree with the mapping: a mapping without write access cannot be
        a writable region (`MappingError`); a writable mapping may be made read-only, and
        then every view of it is read-only too.
        """
        # Exact types: a subclass's `__len__` or a look-alike's `__class__` would choose
        # the size and the memory the raw-pointer paths trust.
        if type(mapping) is not mmap.mmap:
            raise InvalidArgumentType("mapping", "an mmap.mmap", mapping)
        read_only = _checked_flag(read_only, "read_only")
        shared = _checked_flag(shared, "shared")
        if fd is not None:
            fd = _check_fd(fd)
        if type(file_offset) is not int or file_offset < 0:
            raise InvalidArgumentType("file_offset", "a non-negative int", file_offset)
        if mapping.closed:
            raise MappingError(0, "the mapping is closed")
        view = memoryview(mapping).cast("B")
        if view.readonly and not read_only:
            view.release()
            raise MappingError(len(mapping), "the mapping has no write access, so the "
                                             "region must be read_only")
        if read_only and not view.readonly:
            writable, view = view, view.toreadonly()
            writable.release()
        fix = object.__setattr__
        fix(self, "mapping", mapping)
        fix(self, "size", len(mapping))
        fix(self, "read_only", read_only)
        fix(self, "shared", shared)
        fix(self, "fd", fd)
        fix(self, "file_offset", file_offset)
        export, host_address = _pin(mapping)
        fix(self, "host_address", host_address)
        fix(self, "view", view)
        fix(self, "offset", 0)
        self._base = None
        self._placements = None
        self._windows = None
        self._pins = [export]
        self._finalizer = weakref.finalize(self, _unpin, self._pins, fd if owns_fd else None)

    def __setattr__(self, name: str, value: object) -> None:
        if name in self._FIXED:
            raise AttributeError(f"MmapRegion.{name} is fixed at construction")
        object.__setattr__(self, name, value)

    @classmethod
    def anonymous(cls, size: int, *, shared: bool = False, no_reserve: bool = True,
                  huge_pages: bool = False) -> MmapRegion:
        """Zero-filled anonymous memory, private to this process (or shared with children).

        Like Rust vm-memory, the mapping reserves no swap (MAP_NORESERVE): a huge sparse
        guest commits only the pages it touches (anonymous memory never raises SIGBUS; an
        exhausted host is the OOM killer's business). `no_reserve=False` reserves it.
        `huge_pages` asks for hugetlbfs pages (MAP_HUGETLB); the host must have some
        reserved. Huge pages are always reserved at mapping time (`no_reserve` is ignored
        for them): an unreserved huge page that cannot be found when first touched is a
        SIGBUS, while a reservation that fails is a `MappingError` now.
        """
        size = _check_size(size)
        flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
        if no_reserve and not huge_pages:
            flags |= _known_flag("MAP_NORESERVE", MAP_NORESERVE, size,
                                 "pass no_reserve=False to reserve the memory")
        if huge_pages:
            flags |= _known_flag("MAP_HUGETLB", MAP_HUGETLB, size, "huge pages cannot be asked for")
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
    def anonymous_windows(cls, sizes: Sequence[int], *, shared: bool = False) -> list[MmapRegion]:
        """One anonymous mapping (as `anonymous`) cut into a window per size, each on its
        own pages: one `mmap` (and one kernel mapping) for any number of regions.

        Each window is a mapping of exactly its size (its `view`, `host_address` and
        placements cover its bytes only); they share their lifetime: closing any one
        unmaps them all, and is refused while any memory object holds a region placed on
        any of them. The windows, and the mapping they share, are exact `MmapRegion`s
        even when called on a subclass (whose fields a placement could not trust).
        """
        return cut_anonymous_windows(sizes, shared=shared)[0]

    @classmethod
    def memfd(cls, size: int, *, name: str = "guest-memory", sparse: bool = False) -> MmapRegion:
        """Shared memory in a new memfd, allocated up front and sealed (against shrinking,
        growing and further seals).

        The seals mean a peer that receives the fd cannot truncate it under us (which
        would turn our accesses into SIGBUS); allocating up front turns a host out of
        memory into a `MappingError` now rather than a SIGBUS later. `sparse` skips the
        allocation (a huge guest that touches little of its memory).
        """
        size = _check_size(size)
        if type(name) is not str or "\0" in name:
            raise InvalidArgumentType("memfd's name", "a str without NUL", name)
        if not sparse:
            _check_available(size)
        fd = os.memfd_create(name, os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 2))
        try:
            os.ftruncate(fd, size)
            if not sparse:
                os.posix_fallocate(fd, 0, size)
            fcntl.fcntl(fd, _F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
            mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        except OSError as error:
            os.close(fd)
            raise _oserror(size, error) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(mapping, read_only=False, shared=True, fd=fd, owns_fd=True)

    @classmethod
    def from_file(cls, fd: int, size: int, *, offset: int = 0, read_only: bool = False,
                  shared: bool = True, sparse: bool = False) -> MmapRegion:
        """Map `size` bytes of an open file at `offset` (a multiple of the page size).

        The fd is duplicated, so the caller may close its own. A file shorter than
        `offset + size` is refused before mapping (touching past its end is SIGBUS). A
        writable shared mapping of a regular file is allocated up front (a full
        filesystem is a `MappingError` now, not a SIGBUS at the first write) unless
        `sparse`. Nobody may truncate the file while it is mapped: that is the caller's
        duty (use `from_peer_fd` for an fd from another process).
        """
        return cls._map_file(fd, size, offset, read_only, shared,
                             allocate=shared and not read_only and not sparse)

    @classmethod
    def from_peer_fd(cls, fd: int, size: int, *, offset: int = 0, read_only: bool = False,
                     trust_unsealed: bool = False) -> MmapRegion:
        """Map `size` bytes at `offset` of a file received from another process (shared).

        The file must be a memfd sealed against shrinking (F_SEAL_SHRINK), so the peer can
        never truncate it under us; anything else is refused with `UnsealedMemory` unless
        `trust_unsealed` says the peer is trusted not to. The peer's memory is not
        allocated here. The fd is duplicated (the caller closes its own).
        """
        fd = _check_fd(fd)
        size = _check_size(size)
        if not trust_unsealed and not file_seals(fd) & F_SEAL_SHRINK:
            what = ("a memfd without F_SEAL_SHRINK" if _is_memfd(fd) else
                    "not a memfd: nothing stops its owner from truncating it")
            raise UnsealedMemory(size, what)
        return cls._map_file(fd, size, offset, read_only, True, allocate=False)

    @classmethod
    def _map_file(cls, fd: int, size: int, offset: int, read_only: bool, shared: bool, *,
                  allocate: bool) -> MmapRegion:
        fd = _check_fd(fd)
        size = _check_size(size)
        offset = _check_file_offset(offset, size)
        try:
            status = os.fstat(fd)
        except OSError as error:
            raise _oserror(size, error) from None
        regular = stat.S_ISREG(status.st_mode)
        if regular and status.st_size < offset + size:
            raise MappingPastEof(size, offset, status.st_size)
        if not regular and not stat.S_ISBLK(status.st_mode):
            raise MappingError(size, "only regular files, memfds and block devices can "
                                     "back guest memory")
        flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
        prot = mmap.PROT_READ | (0 if read_only else mmap.PROT_WRITE)
        own = os.dup(fd)
        try:
            try:
                if allocate and regular:
                    os.posix_fallocate(own, offset, size)
                mapping = mmap.mmap(own, size, flags=flags, prot=prot, offset=offset)
            except OSError as error:
                raise _oserror(size, error) from None
            except ValueError:  # mmap's own size check: the file shrank since ours
                raise _shrunk_meanwhile(own, size, offset) from None
            return cls(mapping, read_only=read_only, shared=shared, fd=own,
                       file_offset=offset, owns_fd=True)
        except BaseException:
            os.close(own)
            raise

    @property
    def closed(self) -> bool:
        """Whether `close` has unmapped the memory."""
        owner = self if self._base is None else self._base
        return not owner._finalizer.alive

    def close(self) -> None:
        """Unmap now (normally the mapping lives as long as anything refers to it).

        Refused with `RegionInUse`, changing nothing, while any memory object (or a view
        or snapshot holding one) holds a region placed on this mapping, or while a buffer
        exported from it (`as_memoryview`, `region.buffer`) is still held. A window
        closes with its whole shared mapping (see `anonymous_windows`): refused while
        any memory object holds a region placed on any of the windows.
        """
        self._close(None)

    def _add_placements(self, regions: list[GuestRegionMmap]) -> None:
        """Remember `regions` (without keeping them alive) as placed on this mapping, at
        its owner: a close finds every placement on the `mmap` there (call with the
        lock held)."""
        owner = self if self._base is None else self._base
        if owner._placements is None:
            owner._placements = _Ledger()
        owner._placements.add(regions)

    def _live_placements(self) -> list[GuestRegionMmap]:
        """The regions placed on this owner's `mmap` (on it or any of its windows)."""
        return [] if self._placements is None else self._placements.live()

    def _members(self) -> list[MmapRegion]:
        """The mappings sharing this owner's `mmap`: its live windows, or itself."""
        if self._windows is None:
            return [self]
        return [window for ref in self._windows if (window := ref()) is not None]

    def _close(self, start: int | None) -> None:
        if self._base is not None:
            self._base._close(start)
            return
        with lifetime_lock():
            if self.closed:
                return
            members = self._members()
            placements = self._live_placements()
            first = start if start is not None else min(
                (placement.start_value for placement in placements), default=0)
            users = holders_of(placements) or holders_of_host_memory(
                self.host_address, self.host_address + self.size)
            if users:
                raise RegionInUse(first, users)
            own_views = {id(member.view) for member in members} | {id(self.view)}
            buffers = [placement.buffer for placement in placements]
            try:
                for placement in placements:
                    placement.release_typed_views()
                for buffer in buffers:
                    if buffer is not None and id(buffer) not in own_views:
                        buffer.release()
                for member in members:
                    member.view.release()
                self.view.release()
                _unpin(self._pins, None)
                self.mapping.close()
            except BufferError:
                self._restore(members, placements)
                raise RegionInUse(first, 0, exported_buffers=True) from None
            for placement in placements:
                placement._detach_memory()
            self._finalizer()

    def _restore(self, members: list[MmapRegion], placements: list[GuestRegionMmap]) -> None:
        """After a refused unmap: pin again and give every window and placement a live
        view (the mapping never moved, so the host addresses are unchanged)."""
        if not self._pins:
            export, address = _pin(self.mapping)
            assert address == self.host_address
            self._pins.append(export)
        view = memoryview(self.mapping).cast("B")
        if self.read_only and not view.readonly:
            view = view.toreadonly()
        object.__setattr__(self, "view", view)
        for member in members:
            if member is not self:
                window = view[member.offset:member.offset + member.size]
                object.__setattr__(member, "view", window)
        for placement in placements:
            placement._attach_view(placement.mapping.view)

    def __repr__(self) -> str:
        backing = "anonymous" if self.fd is None else f"fd {self.fd}@{self.file_offset:#x}"
        window = "" if self._base is None else f", window at {self.offset:#x}"
        return f"MmapRegion({self.size:#x} bytes, {backing}{window}, shared={self.shared})"


class GuestRegionMmap(GuestMemoryRegion):
    """A mapping placed at a guest physical address."""

    __slots__ = ("mapping",)

    fixed_attributes = GuestMemoryRegion.fixed_attributes | {"mapping"}
    mapping: MmapRegion

    def __init__(self, mapping: MmapRegion, start: GuestAddress) -> None:
        with lifetime_lock():
            self._place(mapping, start)

    @classmethod
    def place_many(cls, placements: Iterable[tuple[MmapRegion, GuestAddress]]
                   ) -> list[GuestRegionMmap]:
        """`GuestRegionMmap(mapping, start)` for each pair, under one lock: the regions
        of a whole layout at once (see `MmapRegion.anonymous_windows`)."""
        regions: list[GuestRegionMmap] = []
        with lifetime_lock():
            for mapping, start in placements:
                region = cls.__new__(cls)
                region._place(mapping, start)
                regions.append(region)
        return regions

    def _place(self, mapping: MmapRegion, start: GuestAddress) -> None:
        """Place `mapping` at `start` (call with the lifetime lock held). Its view is a
        1-D byte view of exactly its size, read-only iff it is: nothing to check there."""
        self._refuse_second_construction()
        if type(mapping) is not MmapRegion:  # a look-alike would choose the host address
            raise InvalidArgumentType("mapping", "an MmapRegion", mapping)
        if mapping.closed:
            raise MappingError(mapping.size, "the mapping is closed")
        size = mapping.size
        self._fill(start, _checked_span(start, size), size, mapping.read_only, mapping.view,
                   mapping.host_address, _NO_TYPED_VIEWS)
        object.__setattr__(self, "mapping", mapping)
        mapping._add_placements([self])

    def _attach_view(self, view: memoryview) -> None:
        object.__setattr__(self, "buffer", view)
        self._derive_fast_paths()

    @property
    def closed(self) -> bool:
        return self.mapping.closed

    def close(self) -> None:
        """Unmap the region's mapping now; refused with `RegionInUse`, changing nothing,
        while a memory object, a view or an exported buffer still holds any region placed
        on the same mapping (they would otherwise touch unmapped memory)."""
        self.mapping._close(self.start_value)

    @property
    def kind(self) -> str:
        return "host-backed mmap region"


def cut_anonymous_windows(sizes: Sequence[int], *, shared: bool = False
                          ) -> tuple[list[MmapRegion], CutFields | None]:
    """`MmapRegion.anonymous_windows(sizes, shared=shared)`, and (on the pure path) what
    the cut vouches for, for `place_windows` to place them by (see `CutFields`)."""
    sizes = _checked_sizes(sizes)
    if not sizes:
        return [], None
    # each size in whole pages (the sizes themselves where all are: the common case)
    spans = sizes if not any(map(and_, sizes, repeat(PAGE_SIZE - 1))) else [
        -(-size // PAGE_SIZE) * PAGE_SIZE for size in sizes]
    total = sum(spans)
    if total > MAX_MAPPING_SIZE:
        raise InvalidRange(0, total, "the windows together exceed the largest mapping; "
                                     "map them separately")
    # The owner is exact: the windows (exact too) copy its fields, which a subclass's
    # properties would otherwise choose (the host address the raw-pointer paths use).
    owner = MmapRegion.anonymous(total, shared=shared)
    windows, fields = _cut_windows(owner, sizes, spans)
    owner._windows = list(each(weakref.ref, windows))
    return windows, fields


@dataclass(frozen=True)
class CutFields:
    """What `_cut_windows_pure` vouches for of the batch it has just made: the windows
    themselves, the checked sizes (in their order) and the read-only state it gave them,
    so a placement of exactly those windows neither reads these back nor checks any
    window's fields for their types. Only the code that made the windows, and never let
    them out, may pass it on; a placement of any other list does not trust it."""

    windows: tuple[MmapRegion, ...]
    """A copy: the list handed to the caller may change; this may not."""
    sizes: tuple[int, ...]
    """A tuple too: a list a caller could change would be trusted as the sizes."""
    read_only: bool

    def vouches_for(self, windows: Sequence[MmapRegion]) -> bool:
        """Whether `windows` are this batch's very windows, all of them, in order."""
        return len(windows) == len(self.windows) and all(map(is_, windows, self.windows))


def place_windows(windows: Iterable[MmapRegion], starts: Iterable[GuestAddress],
                  fields: CutFields | None = None
                  ) -> tuple[list[GuestRegionMmap], bool] | None:
    """`GuestRegionMmap.place_many(zip(windows, starts))` for the windows of one open
    `anonymous_windows` batch, each placed once, with only the checks a user's start
    needs made per region; and whether the regions come in ascending, non-overlapping
    order. None, with nothing placed, if the windows are not one such batch or a start
    needs `place_many`'s checks (which then give their errors). Both are read once, into
    tuples that are checked and then placed: a list changed meanwhile (by a finalizer
    the collector runs, another thread) changes neither the check nor the placement.

    With `fields` (from `cut_anonymous_windows`, by a caller that made the windows and
    let nobody else see them) the windows are known to be one exact batch with fields
    of the types the cut gives: only the starts are checked."""
    windows, starts = tuple(windows), tuple(starts)
    owner = windows[0]._base if windows else None
    if owner is None or len(starts) != len(windows):
        return None
    if fields is not None and not fields.vouches_for(windows):
        fields = None  # not the batch it was made for: checked as any list is
    if fields is None and (set(map(type, windows)) != {MmapRegion}
                           or not all(map(is_, map(_WINDOW_BASE, windows), repeat(owner)))):
        return None
    with lifetime_lock():
        if owner.closed:
            return None
        placed = _place_fresh(windows, starts, fields)
        if placed is not None:
            owner._add_placements(placed[0])
    return placed


def _cut_windows_pure(owner: MmapRegion, sizes: list[int], spans: list[int]
                      ) -> tuple[list[MmapRegion], CutFields | None]:
    """The windows of `anonymous_windows`: a mapping of each (checked) size on `owner`'s,
    each `span` (its size in whole pages) after the one before; and the fields a
    placement reads. Made a field at a time for all of them (a loop in C each; see
    vm_memory/bulk.py)."""
    if len(sizes) != len(spans):
        raise ValueError("_cut_windows: a span for each size")
    count = len(sizes)
    offsets = list(accumulate(islice(spans, max(count - 1, 0)), initial=0))
    file_offset = owner.file_offset
    view = owner.view
    windows = make_each(MmapRegion, _WINDOW_SETTERS, count, {
        "mapping": repeat(owner.mapping), "size": sizes, "read_only": repeat(owner.read_only),
        "shared": repeat(owner.shared), "fd": repeat(owner.fd),
        "file_offset": map(add, offsets, repeat(file_offset)) if file_offset else offsets,
        "host_address": map(add, offsets, repeat(owner.host_address)),
        "view": map(view.__getitem__, each(slice, offsets, map(add, offsets, sizes))),
        "offset": offsets,
        "_base": repeat(owner)})  # the owner keeps its pin, finalizer and placements
    return windows, CutFields(tuple(windows), tuple(sizes), owner.read_only)


def _place_fresh_pure(windows: Sequence[MmapRegion], starts: Sequence[GuestAddress],
                      fields: CutFields | None = None
                      ) -> tuple[list[GuestRegionMmap], bool] | None:
    """The regions of `GuestRegionMmap._place_windows` (windows of one open batch, so
    exact, open, each a 1-D byte view of its checked size) and whether they are in
    ascending, non-overlapping order; None if a start is not a `GuestAddress`, its
    region would pass 2**64, or a window's fields are not of the types `anonymous_windows`
    gives them (not checked where `fields` vouches for these very windows). Made a field
    at a time for all of them, each field what `_fill` sets (a loop in C each; see
    vm_memory/bulk.py)."""
    if len(windows) != len(starts):
        raise ValueError("_place_fresh: a start for each window")
    if not windows:
        return [], True
    if set(map(type, starts)) != {GuestAddress}:
        return None
    if fields is not None and fields.vouches_for(windows):  # see CutFields
        # Read where they are needed, not kept in lists beside the windows: a list made
        # before the windows, or kept longer, leaves its memory in the heap between
        # theirs (measured: 23 bytes of RSS a region after a build of 100,000).
        sizes: Sequence[int] = fields.sizes
        hosts = list(map(_WINDOW_HOST_ADDRESS, windows))
        views: Iterable[memoryview] = map(_WINDOW_VIEW, windows)
        any_read_only = fields.read_only
        read_onlys: Iterable[bool] = [True] * len(windows) if any_read_only \
            else repeat(False, len(windows))
    else:
        sizes = list(map(_WINDOW_SIZE, windows))
        views = list(map(_WINDOW_VIEW, windows))
        hosts = list(map(_WINDOW_HOST_ADDRESS, windows))
        read_onlys = list(map(_WINDOW_READ_ONLY, windows))
        # What `anonymous_windows` set, unless a window was changed with
        # `object.__setattr__` since (then `place_many` places them, a region at a time).
        if set(map(type, sizes)) != {int} or set(map(type, hosts)) != {int} \
                or set(map(type, views)) != {memoryview} \
                or set(map(type, read_onlys)) - {bool} or min(sizes) <= 0:
            return None
        any_read_only = any(read_onlys)
    start_values: list[int] = list(map(_GUEST_VALUE, starts))
    ends = list(map(add, start_values, sizes))
    if max(ends) > _ADDRESS_SPACE_END:
        return None
    # What `_derive` sets, for regions with a buffer and a host address and no bitmap.
    limits = list(map(sub, ends, repeat(7)))
    deltas = list(map(sub, hosts, start_values))
    if any(map(and_, deltas, repeat(7))):
        misaligned = list(map(and_, deltas, repeat(7)))
        deltas = [0 if odd else delta for odd, delta in zip(misaligned, deltas, strict=True)]
        atomic_limits = [-1 if odd else limit
                         for odd, limit in zip(misaligned, limits, strict=True)]
    else:
        atomic_limits = limits
    if any_read_only:  # read_onlys is a list then
        write_limits = [-1 if read_only else limit
                        for read_only, limit in zip(read_onlys, limits, strict=True)]
        atomic_write_limits = [-1 if read_only else limit
                               for read_only, limit in zip(read_onlys, atomic_limits, strict=True)]
    else:
        write_limits, atomic_write_limits = limits, atomic_limits
    regions = make_each(GuestRegionMmap, _REGION_SETTERS, len(windows), {
        "start": starts, "start_value": start_values, "length": sizes,
        "read_only": read_onlys, "buffer": views, "host_address": hosts,
        "typed_views": repeat(_NO_TYPED_VIEWS), "dirty": repeat(None), "end_value": ends,
        "atomic_delta": deltas, "read_limit": limits, "write_limit": write_limits,
        "atomic_read_limit": atomic_limits, "atomic_write_limit": atomic_write_limits,
        "atomic_untracked_limit": atomic_write_limits, "mapping": windows})
    return regions, all(map(le, ends, islice(start_values, 1, None)))


_ADDRESS_SPACE_END: Final = 1 << 64
"""One past the last guest address: where a region must end at the latest."""

# Read with getattr: typeshed types it through protocols the strict checkers call unknown.
and_: Final[Callable[[int, int], int]] = getattr(operator, "and_")  # noqa: B009
_GUEST_VALUE: Final = attrgetter("_guest_value")
_WINDOW_BASE: Final = attrgetter("_base")
_WINDOW_SIZE: Final = attrgetter("size")
_WINDOW_VIEW: Final = attrgetter("view")
_WINDOW_HOST_ADDRESS: Final = attrgetter("host_address")
_WINDOW_READ_ONLY: Final = attrgetter("read_only")

if compiled is None:
    _WINDOW_SETTERS: Final = {name: slot_setter(MmapRegion, name) for name in (
        "mapping", "size", "read_only", "shared", "fd", "file_offset", "host_address",
        "view", "offset", "_base")}
    _REGION_SETTERS: Final = {name: slot_setter(GuestRegionMmap, name)
                              for name in (*_FIXED, "mapping")}
    _Ledger: type[_WeakLedger] = _WeakLedger
    _cut_windows = _cut_windows_pure
    _place_fresh = _place_fresh_pure
else:  # the same in C
    _compiled = compiled
    _Ledger = _compiled.Ledger

    def _cut_windows(owner: MmapRegion, sizes: list[int], spans: list[int]
                     ) -> tuple[list[MmapRegion], CutFields | None]:
        return _compiled.cut_windows(MmapRegion, owner, sizes, spans), None

    def _place_fresh(windows: Sequence[MmapRegion], starts: Sequence[GuestAddress],
                     fields: CutFields | None = None
                     ) -> tuple[list[GuestRegionMmap], bool] | None:
        return _compiled.place_windows(  # type: ignore[no-any-return]
            GuestRegionMmap, MmapRegion, windows, starts, _NO_TYPED_VIEWS)
