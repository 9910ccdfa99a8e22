"""Host-backed regions: what each kind of mapping shares, seals, refuses and pins.

Private and shared anonymous memory and memfds are checked with a real forked child
writing to them; file mappings with a real temporary file read back with `os.pread`.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import mmap
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Final

import pytest

from vm_memory import (
    AlignedGuestAddress,
    GuestAddress,
    GuestMemory,
    GuestMemoryMmap,
    GuestRegionMmap,
    InvalidRange,
    MappingError,
    MmapRegion,
    ReadOnlyRegion,
    RegionOverlap,
)
from vm_memory.errors import MappingPastEof

PAGE: Final = mmap.PAGESIZE
LIMIT: Final = 1 << 64
F_GET_SEALS: Final = getattr(fcntl, "F_GET_SEALS", 1034)
F_SEAL_SHRINK: Final = getattr(fcntl, "F_SEAL_SHRINK", 0x2)
F_SEAL_GROW: Final = getattr(fcntl, "F_SEAL_GROW", 0x4)


def in_child(action: Callable[[], None]) -> int:
    """Run `action` in a forked child; its exit status (0: it returned normally)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            action()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def backing_file() -> Iterator[int]:
    """A temporary file of three pages: page i is filled with byte 0x10 + i."""
    with tempfile.TemporaryFile() as file:
        file.write(b"".join(bytes([0x10 + page]) * PAGE for page in range(3)))
        file.flush()
        yield file.fileno()


# ---- Anonymous memory and memfds: who sees a child's writes ----------------------------


@pytest.mark.parametrize(("build", "child_write_visible"), [
    (lambda: MmapRegion.anonymous(PAGE), False),
    (lambda: MmapRegion.anonymous(PAGE, shared=True), True),
    (lambda: MmapRegion.memfd(PAGE), True),
], ids=["anonymous private", "anonymous shared", "memfd"])
def test_child_process_writes(build: Callable[[], MmapRegion],
                              child_write_visible: bool) -> None:
    mapping = build()
    memory = GuestMemoryMmap.from_regions([GuestRegionMmap(mapping, GuestAddress(0x1000))])
    memory.write_slice(GuestAddress(0x1000), b"parent")
    assert in_child(lambda: memory.write_slice(GuestAddress(0x1000), b"child!")) == 0
    expected = b"child!" if child_write_visible else b"parent"
    assert memory.read_bytes(GuestAddress(0x1000), 6) == expected
    assert mapping.shared is child_write_visible


def test_anonymous_memory_starts_zeroed() -> None:
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 3 * PAGE)])
    assert memory.read_bytes(GuestAddress(0), 3 * PAGE) == bytes(3 * PAGE)


def test_memfd_is_sealed_against_resizing() -> None:
    """A peer holding the fd cannot shrink it under us (our accesses would be SIGBUS)."""
    mapping = MmapRegion.memfd(2 * PAGE)
    assert mapping.fd is not None
    seals = fcntl.fcntl(mapping.fd, F_GET_SEALS)
    assert seals & F_SEAL_SHRINK
    assert seals & F_SEAL_GROW
    with pytest.raises(PermissionError):
        os.ftruncate(mapping.fd, PAGE)
    with pytest.raises(PermissionError):
        os.ftruncate(mapping.fd, 4 * PAGE)
    with pytest.raises(PermissionError):
        os.ftruncate(mapping.fd, 0)
    assert os.fstat(mapping.fd).st_size == 2 * PAGE


def test_memfd_bytes_are_the_fd_bytes() -> None:
    """What the memory holds is what another mapping of the fd (a peer) reads."""
    mapping = MmapRegion.memfd(2 * PAGE)
    assert mapping.fd is not None
    memory = GuestMemoryMmap.from_regions([GuestRegionMmap(mapping, GuestAddress(0))])
    memory.write_slice(GuestAddress(PAGE - 2), b"span")
    assert os.pread(mapping.fd, 4, PAGE - 2) == b"span"
    with mmap.mmap(mapping.fd, 2 * PAGE) as peer:
        peer[10:14] = b"peer"
    assert memory.read_bytes(GuestAddress(10), 4) == b"peer"


# ---- File mappings -----------------------------------------------------------------------


def test_file_content_appears_at_the_right_guest_address(backing_file: int) -> None:
    mapping = MmapRegion.from_file(backing_file, PAGE, offset=PAGE)
    assert mapping.file_offset == PAGE
    memory = GuestMemoryMmap.from_regions([GuestRegionMmap(mapping, GuestAddress(0x4000_0000))])
    assert memory.read_bytes(GuestAddress(0x4000_0000), PAGE) == b"\x11" * PAGE
    memory.write_slice(GuestAddress(0x4000_0000 + 5), b"guest")
    assert os.pread(backing_file, 5, PAGE + 5) == b"guest", "a shared mapping writes through"
    os.pwrite(backing_file, b"file", PAGE + 100)
    assert memory.read_bytes(GuestAddress(0x4000_0000 + 100), 4) == b"file"
    assert os.pread(backing_file, PAGE, 0) == b"\x10" * PAGE
    assert os.pread(backing_file, PAGE, 2 * PAGE) == b"\x12" * PAGE


def test_private_file_mapping_keeps_writes_to_itself(backing_file: int) -> None:
    mapping = MmapRegion.from_file(backing_file, 2 * PAGE, offset=PAGE, shared=False)
    memory = GuestMemoryMmap.from_regions([GuestRegionMmap(mapping, GuestAddress(0))])
    memory.write_slice(GuestAddress(PAGE), b"private")
    assert memory.read_bytes(GuestAddress(PAGE), 7) == b"private"
    assert os.pread(backing_file, 7, 2 * PAGE) == b"\x12" * 7


def test_file_mapping_fd_is_its_own(backing_file: int) -> None:
    """The region duplicates the fd: the caller may close its own."""
    duplicate = os.dup(backing_file)
    mapping = MmapRegion.from_file(duplicate, PAGE)
    os.close(duplicate)
    assert mapping.fd is not None
    assert os.pread(mapping.fd, 1, 0) == b"\x10"
    memory = GuestMemoryMmap.from_regions([GuestRegionMmap(mapping, GuestAddress(0))])
    assert memory.read_bytes(GuestAddress(0), 2) == b"\x10\x10"


@pytest.mark.parametrize("offset", [1, PAGE // 2, PAGE + 8, -PAGE])
def test_file_offset_must_be_page_aligned(backing_file: int, offset: int) -> None:
    with pytest.raises(InvalidRange) as raised:
        MmapRegion.from_file(backing_file, PAGE, offset=offset)
    assert raised.value.address == offset


def _mappings_of(fd: int) -> int:
    """How many lines of this process's memory map show the file behind `fd`."""
    inode = os.fstat(fd).st_ino
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.split()[4] == str(inode))


@pytest.mark.parametrize(("size", "offset"), [
    (4 * PAGE, 0), (3 * PAGE, PAGE), (PAGE, 3 * PAGE), (PAGE + 1, 2 * PAGE),
], ids=["longer than file", "past the end from an offset", "offset at the end",
        "one byte past"])
def test_file_shorter_than_the_range_is_refused_before_mapping(backing_file: int, size: int,
                                                               offset: int) -> None:
    """Touching a mapping past end of file is SIGBUS: refuse without mapping anything."""
    open_fds = set(os.listdir("/proc/self/fd"))
    with pytest.raises(MappingPastEof) as raised:
        MmapRegion.from_file(backing_file, size, offset=offset)
    error = raised.value
    assert isinstance(error, MappingError)
    assert (error.size, error.file_offset, error.file_size) == (size, offset, 3 * PAGE)
    assert _mappings_of(backing_file) == 0
    assert set(os.listdir("/proc/self/fd")) == open_fds, "an fd leaked"
    assert os.fstat(backing_file).st_size == 3 * PAGE, "the file was extended"


def test_empty_file_is_refused(backing_file: int) -> None:
    os.ftruncate(backing_file, 0)
    with pytest.raises(MappingPastEof):
        MmapRegion.from_file(backing_file, PAGE)
    assert _mappings_of(backing_file) == 0


def test_file_mapping_is_visible_in_the_memory_map(backing_file: int) -> None:
    """The control for the test above: a successful map does show up."""
    mapping = MmapRegion.from_file(backing_file, PAGE)
    assert _mappings_of(backing_file) == 1
    del mapping
    gc.collect()
    assert _mappings_of(backing_file) == 0


# ---- Read-only file regions ---------------------------------------------------------------


def test_read_only_region_refuses_every_store(backing_file: int) -> None:
    mapping = MmapRegion.from_file(backing_file, 2 * PAGE, offset=PAGE, read_only=True)
    writable = MmapRegion.anonymous(PAGE)
    memory = GuestMemoryMmap.from_regions([
        GuestRegionMmap(writable, GuestAddress(0)),
        GuestRegionMmap(mapping, GuestAddress(PAGE)),
    ])
    assert memory.regions()[1].read_only
    file_before = os.pread(backing_file, 3 * PAGE, 0)
    stores: list[tuple[str, Callable[[], object], int, int]] = [
        ("write", lambda: memory.write(GuestAddress(PAGE + 8), b"x" * 8), PAGE + 8, 8),
        ("write_slice", lambda: memory.write_slice(GuestAddress(2 * PAGE), b"x"), 2 * PAGE, 1),
        ("write spanning into it", lambda: memory.write(GuestAddress(PAGE - 4), b"x" * 8),
         PAGE, 4),
        ("write_slice spanning into it",
         lambda: memory.write_slice(GuestAddress(PAGE - 4), b"x" * 8), PAGE, 4),
        ("write_obj_unaligned",
         lambda: memory.write_obj_unaligned(GuestAddress(PAGE + 3), ctypes.c_uint32, 7),
         PAGE + 3, 4),
        ("write_obj", lambda: memory.write_obj(AlignedGuestAddress.new(ctypes.c_uint32,
                                                                       GuestAddress(PAGE + 4)), 7),
         PAGE + 4, 4),
    ]
    for name, store, address, length in stores:
        with pytest.raises(ReadOnlyRegion) as raised:
            store()
        assert (raised.value.address, raised.value.length) == (address, length), name
        assert memory.read_bytes(GuestAddress(0), PAGE) == bytes(PAGE), name
    assert memory.read_bytes(GuestAddress(PAGE), 2 * PAGE) == b"\x11" * PAGE + b"\x12" * PAGE
    assert os.pread(backing_file, 3 * PAGE, 0) == file_before
    assert memory.get_host_address(GuestAddress(PAGE)) == mapping.host_address



# ---- Pinning ------------------------------------------------------------------------------


def test_mapping_is_pinned_while_the_region_lives() -> None:
    """The mmap cannot be closed or resized under an access (use after unmap)."""
    mapping = MmapRegion.anonymous(2 * PAGE)
    raw = mapping.mapping
    region = GuestRegionMmap(mapping, GuestAddress(0x1000))
    memory = GuestMemoryMmap.from_regions([region])
    with pytest.raises(BufferError):
        region.mapping.mapping.close()
    with pytest.raises(BufferError):
        raw.resize(PAGE)
    assert not raw.closed
    memory.write_slice(GuestAddress(0x1000), b"alive")
    assert memory.read_bytes(GuestAddress(0x1000), 5) == b"alive"
    del memory, region, mapping
    gc.collect()
    raw.close()  # the pin went with the last holder
    assert raw.closed


def test_pin_holds_for_read_only_file_mappings(backing_file: int) -> None:
    mapping = MmapRegion.from_file(backing_file, PAGE, read_only=True)
    with pytest.raises(BufferError):
        mapping.mapping.close()


# ---- Layout rules -----------------------------------------------------------------------


def _region(start: int, size: int = PAGE) -> GuestRegionMmap:
    return GuestRegionMmap(MmapRegion.anonymous(size), GuestAddress(start))


@pytest.mark.parametrize(("first", "second"), [
    ((0x1000, PAGE), (0x1000, PAGE)),
    ((0x1000, 2 * PAGE), (0x2000, PAGE)),
    ((0x1000, 4 * PAGE), (0x2000, PAGE)),
    ((0x1000, PAGE), (0x1FFF, 1)),
    ((LIMIT - 2 * PAGE, 2 * PAGE), (LIMIT - PAGE, PAGE)),
], ids=["same start", "partial", "contained", "last byte", "at the top"])
@pytest.mark.parametrize("given_reversed", [False, True], ids=["in order", "reversed"])
def test_overlapping_regions_are_refused(first: tuple[int, int], second: tuple[int, int],
                                         given_reversed: bool) -> None:
    regions = [_region(*first), _region(*second)]
    if given_reversed:
        regions.reverse()
    for build in (GuestMemory, GuestMemoryMmap, GuestMemoryMmap.from_regions):
        with pytest.raises(RegionOverlap) as raised:
            build(regions)
        error = raised.value
        facts = (error.first_start, error.first_length, error.second_start,
                 error.second_length)
        assert facts == (*first, *second)


def test_overlap_refused_through_from_ranges() -> None:
    with pytest.raises(RegionOverlap) as raised:
        GuestMemoryMmap.from_ranges([(GuestAddress(0x3000), PAGE),
                                     (GuestAddress(0x2800), PAGE)])
    assert (raised.value.first_start, raised.value.second_start) == (0x2800, 0x3000)


def test_adjacent_regions_are_accepted() -> None:
    memory = GuestMemoryMmap.from_regions([_region(0x2000), _region(0x1000), _region(0x3000)])
    assert [region.start for region in memory.regions()] == \
        [GuestAddress(0x1000), GuestAddress(0x2000), GuestAddress(0x3000)]
    memory.write_slice(GuestAddress(0x1FFE), b"abcd" * 1025)
    assert memory.read_bytes(GuestAddress(0x1FFE), 4100) == b"abcd" * 1025


@pytest.mark.parametrize("start", [LIMIT - PAGE + 1, LIMIT - 1, LIMIT - PAGE // 2])
def test_region_passing_the_top_is_refused(start: int) -> None:
    with pytest.raises(InvalidRange) as raised:
        _region(start)
    assert (raised.value.address, raised.value.length) == (start, PAGE)


def test_region_ending_exactly_at_the_top_is_accepted() -> None:
    region = _region(LIMIT - PAGE)
    assert region.last_addr == GuestAddress(LIMIT - 1)
    memory = GuestMemoryMmap.from_regions([region])
    memory.write_slice(GuestAddress(LIMIT - 3), b"end")
    assert memory.read_bytes(GuestAddress(LIMIT - 3), 3) == b"end"


@pytest.mark.parametrize("size", [0, -1, -PAGE])
def test_empty_or_negative_mapping_is_refused(size: int) -> None:
    for build in (MmapRegion.anonymous, MmapRegion.memfd):
        with pytest.raises(InvalidRange):
            build(size)


def test_region_start_must_be_a_guest_address() -> None:
    with pytest.raises(TypeError):
        GuestRegionMmap(MmapRegion.anonymous(PAGE), 0x1000)  # type: ignore[arg-type]


def test_mmap_memory_holds_only_mmap_regions() -> None:
    with pytest.raises(TypeError):
        GuestMemoryMmap([object()])  # type: ignore[list-item]


@pytest.mark.parametrize("thing", [object(), "region"], ids=["object", "str"])
def test_memory_holds_only_regions(thing: object) -> None:
    with pytest.raises(TypeError):
        GuestMemory([thing])  # type: ignore[list-item]
