"""Guest memory from a vhost-user memory table, and front-end address translation.

Each table row is (guest address, size, front-end virtual address, mmap offset) with an
fd. The back-end maps `size` bytes of the fd at the offset, shared, into a
`GuestRegionMmap` at the guest address; the regions form a `GuestMemoryMmap` published
through a `GuestMemoryAtomic`, so a queue being served keeps using the snapshot it took
while `ADD_MEM_REG`/`REM_MEM_REG`/a new `SET_MEM_TABLE` publish new ones: it never sees
a half-updated table, and a removed region stays mapped until the last snapshot using
it is dropped.

vhost-user gives ring addresses as the front-end's virtual addresses; `to_guest`
translates them through the same rows, with `UnmappedAddress` for an address no row
covers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from vm_memory import (
    GuestAddress,
    GuestMemoryAtomic,
    GuestMemoryError,
    GuestMemoryMmap,
    GuestRegionMmap,
    MmapRegion,
)
from vm_memory_vhost.errors import UnmappedAddress, VhostUserError

MAX_MEM_SLOTS = 32
"""The regions the back-end accepts (reported by GET_MAX_MEM_SLOTS)."""


def map_peer_fd(fd: int, size: int, offset: int) -> MmapRegion:
    """Map `size` bytes of a front-end's fd at `offset`, shared (the fd is duplicated).

    The one place peer memory is mapped. `MmapRegion.from_peer_fd` refuses an fd not
    sealed against shrinking (`UnsealedMemory`): a front-end that could truncate the file
    under us would turn our accesses into SIGBUS. QEMU's `memory-backend-memfd` seals.
    """
    return MmapRegion.from_peer_fd(fd, size, offset=offset)


@dataclass(frozen=True)
class RegionRow:
    """One memory-table row and the region mapped for it."""

    guest_address: int
    size: int
    user_address: int
    mmap_offset: int
    region: GuestRegionMmap


class MemoryTable:
    """The current memory table: guest memory snapshots plus front-end VA translation.

    Changed only by the control thread; read by queue threads through `memory()`.
    """

    def __init__(self) -> None:
        self.atomic: GuestMemoryAtomic[GuestMemoryMmap] = GuestMemoryAtomic(
            GuestMemoryMmap([]))
        self.rows: list[RegionRow] = []

    def memory(self) -> GuestMemoryMmap:
        """The current snapshot."""
        return self.atomic.memory()

    @staticmethod
    def _map(request: str, guest_address: int, size: int, user_address: int,
             mmap_offset: int, fd: int) -> RegionRow:
        for name, value in (("guest address", guest_address), ("size", size),
                            ("user address", user_address)):
            if value + size > 1 << 64 or size == 0:
                raise VhostUserError(request, f"region with {name} {value:#x} and size "
                                              f"{size:#x} is empty or passes 2**64")
        try:
            mapping = map_peer_fd(fd, size, mmap_offset)
            region = GuestRegionMmap(mapping, GuestAddress(guest_address))
        except GuestMemoryError as error:
            raise VhostUserError(request, f"cannot map region at guest {guest_address:#x}: "
                                          f"{error}") from None
        return RegionRow(guest_address, size, user_address, mmap_offset, region)

    def _check_user_overlap(self, request: str, rows: list[RegionRow]) -> None:
        ordered = sorted(rows, key=lambda row: row.user_address)
        for before, after in itertools.pairwise(ordered):
            if before.user_address + before.size > after.user_address:
                raise VhostUserError(request, f"regions at user addresses "
                                              f"{before.user_address:#x} and "
                                              f"{after.user_address:#x} overlap")

    def replace(self, request: str,
                rows: list[tuple[int, int, int, int, int]]) -> None:
        """A whole new table (SET_MEM_TABLE): (guest, size, user, offset, fd) rows.

        All or nothing: if any row is refused, the old table stays.
        """
        if len(rows) > MAX_MEM_SLOTS:
            raise VhostUserError(request, f"{len(rows)} regions, at most {MAX_MEM_SLOTS}")
        mapped = [self._map(request, *row) for row in rows]
        self._check_user_overlap(request, mapped)
        try:
            memory = GuestMemoryMmap(row.region for row in mapped)
        except GuestMemoryError as error:
            raise VhostUserError(request, str(error)) from None
        self.atomic.update(lambda _old: memory)
        self.rows = mapped

    def add(self, request: str, guest_address: int, size: int, user_address: int,
            mmap_offset: int, fd: int) -> None:
        """One more region (ADD_MEM_REG)."""
        if len(self.rows) >= MAX_MEM_SLOTS:
            raise VhostUserError(request, f"all {MAX_MEM_SLOTS} memory slots are in use")
        row = self._map(request, guest_address, size, user_address, mmap_offset, fd)
        self._check_user_overlap(request, [*self.rows, row])
        try:
            self.atomic.insert_region(row.region)
        except GuestMemoryError as error:
            raise VhostUserError(request, str(error)) from None
        self.rows.append(row)

    def remove(self, request: str, guest_address: int, size: int, user_address: int) -> None:
        """Drop the region with exactly this range (REM_MEM_REG)."""
        for row in self.rows:
            if (row.guest_address, row.size, row.user_address) == \
                    (guest_address, size, user_address):
                self.atomic.remove_region(GuestAddress(guest_address), size)
                self.rows.remove(row)
                return
        raise VhostUserError(request, f"no region at guest {guest_address:#x} of size "
                                      f"{size:#x} and user address {user_address:#x}")

    def clear(self) -> None:
        """Forget every region (on disconnect)."""
        self.atomic.update(lambda _old: GuestMemoryMmap([]))
        self.rows = []

    def to_guest(self, request: str, user_address: int, length: int) -> int:
        """The guest address of a front-end virtual address range (all in one row)."""
        for row in self.rows:
            offset = user_address - row.user_address
            if offset >= 0 and offset + length <= row.size:
                return row.guest_address + offset
        raise UnmappedAddress(request, user_address, length, "front-end virtual")
