"""Host-backed regions (`MmapRegion`, `GuestRegionMmap`): what each kind of mapping
shares, seals, refuses and pins.

Private and shared anonymous memory and memfds are checked with a real forked child
writing to them; file mappings with a real temporary file read back with `os.pread`.
Stores on read-only mappings run in a child interpreter (one that reached the page
would kill it).
"""

from __future__ import annotations

import fcntl
import gc
import json
import mmap
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest
from host_assumptions import needs_8_byte_atomics
from support import run_python_code

from vm_memory import (
    FileOffset,
    GuestAddress,
    GuestMemoryMmap,
    GuestRegionMmap,
    InvalidArgumentType,
    InvalidRange,
    MappingError,
    MappingPastEof,
    MmapRegion,
)

PAGE: Final = mmap.PAGESIZE
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
    """Nobody holding the fd (a peer after SCM_RIGHTS holds a duplicate) can shrink it
    under us (our accesses would be SIGBUS) or grow it; its size stays put."""
    mapping = MmapRegion.memfd(2 * PAGE)
    assert mapping.fd is not None and mapping.shared
    seals = fcntl.fcntl(mapping.fd, F_GET_SEALS)
    assert seals & F_SEAL_SHRINK
    assert seals & F_SEAL_GROW
    duplicate = os.dup(mapping.fd)
    try:
        for fd in (mapping.fd, duplicate):
            for size in (0, PAGE, 4 * PAGE):
                with pytest.raises(PermissionError):
                    os.ftruncate(fd, size)
    finally:
        os.close(duplicate)
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


MEMFD_PAST_THE_HOST = """
import json, os
from vm_memory import GuestAddress, GuestMemoryMmap, MappingError, MmapRegion
from vm_memory.mmap_region import MAX_MAPPING_SIZE
with open("/proc/meminfo", encoding="ascii") as meminfo:
    fields = dict(line.split(":", 1) for line in meminfo)
available = sum(int(fields[key].split()[0]) * 1024 for key in ("MemAvailable", "SwapFree"))
size = (2 * available) // 4096 * 4096
if size > MAX_MAPPING_SIZE:  # a 32-bit host: refused as a range before any of this
    print(json.dumps({"beyond": size}))
    raise SystemExit
before = len(os.listdir("/proc/self/fd"))
outcome = {}
for name, make in (("memfd", lambda: MmapRegion.memfd(size)),
                   ("from_ranges_memfd",
                    lambda: GuestMemoryMmap.from_ranges_memfd([(GuestAddress(0), size)]))):
    try:
        make()
        outcome[name] = "built"
    except MappingError as error:
        outcome[name] = str(error)
outcome["fds"] = len(os.listdir("/proc/self/fd")) - before
print(json.dumps(outcome))
"""


def test_a_memfd_larger_than_the_host_can_give_is_refused_before_allocating() -> None:
    """A memfd has no size limit of its own: allocating twice the host's available memory
    and swap up front filled memory until the kernel's OOM killer ended the process. Now
    it is a MappingError before anything is allocated, no fd kept. (In a child: the
    failure this guards against takes the whole process.)"""
    outcome = json.loads(run_python_code(MEMFD_PAST_THE_HOST, timeout=120).stdout)
    if "beyond" in outcome:
        pytest.skip(f"twice the available memory ({outcome['beyond']} bytes) is more than "
                    "a mapping here can be: refused as a range")
    for name in ("memfd", "from_ranges_memfd"):
        assert "available" in outcome[name], outcome
    assert outcome["fds"] == 0, outcome


def test_a_memfd_name_is_a_str_without_nul() -> None:
    for name in ("a\0b", 5, b"guest"):
        with pytest.raises(InvalidArgumentType):
            MmapRegion.memfd(PAGE, name=name)  # type: ignore[arg-type]


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
    gc.collect()  # what earlier tests left for the collector closes its fds now, not below
    open_fds = set(os.listdir("/proc/self/fd"))
    with pytest.raises(MappingPastEof) as raised:
        MmapRegion.from_file(backing_file, size, offset=offset)
    error = raised.value
    assert isinstance(error, MappingError)
    assert (error.size, error.file_offset, error.file_size) == (size, offset, 3 * PAGE)
    assert _mappings_of(backing_file) == 0
    assert set(os.listdir("/proc/self/fd")) <= open_fds, "an fd leaked"
    assert os.fstat(backing_file).st_size == 3 * PAGE, "the file was extended"
    with pytest.raises(MappingPastEof):
        GuestMemoryMmap.from_ranges_with_files(
            [(GuestAddress(0), size, FileOffset(backing_file, offset))])
    assert _mappings_of(backing_file) == 0


SHRINKER: Final = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
size = int(sys.argv[2])
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    os.ftruncate(fd, 0)
    os.ftruncate(fd, size)
"""


def test_a_file_truncated_while_it_is_mapped_is_a_typed_refusal(tmp_path: Path) -> None:
    """Another process truncates the file between our size check and mmap's own: the
    refusal is still `MappingPastEof` (Python's mmap says ValueError), and no fd leaks.
    The test counts refusals that came from mmap's check (the race hit) and fails if none
    came in its time: then it would have shown nothing (found on arm64, where it raised
    ValueError)."""
    path = tmp_path / "shrinking.img"
    path.write_bytes(bytes(4 * PAGE))
    fd = os.open(path, os.O_RDONLY)
    gc.collect()
    open_fds = set(os.listdir("/proc/self/fd"))
    shrinker = subprocess.Popen([sys.executable, "-c", SHRINKER, str(path), str(4 * PAGE),
                                 "120"], stdout=subprocess.PIPE, text=True)
    outcomes = {"mapped": 0, "refused by our check": 0, "refused by mmap's check": 0}
    try:
        assert shrinker.stdout is not None and shrinker.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 100
        while outcomes["refused by mmap's check"] < 3 and time.monotonic() < deadline:
            try:
                MmapRegion.from_file(fd, 4 * PAGE, read_only=True).close()
                outcomes["mapped"] += 1
            except MappingError as error:
                late = isinstance(error.__context__, ValueError)
                outcomes["refused by mmap's check" if late else "refused by our check"] += 1
    finally:
        shrinker.kill()
        shrinker.wait()
        os.close(fd)
    assert outcomes["refused by mmap's check"] >= 1, f"the race was never hit: {outcomes}"
    assert set(os.listdir("/proc/self/fd")) <= open_fds, "an fd leaked"


def test_file_exactly_long_enough_is_mapped(backing_file: int) -> None:
    """The control for the refusals above: the last page of the file, exactly."""
    mapping = MmapRegion.from_file(backing_file, PAGE, offset=2 * PAGE)
    assert bytes(mapping.mapping[:2]) == b"\x12\x12"


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


# ---- Read-only file regions -------------------------------------------------------------

READ_ONLY_STORES: Final = {
    # name: (the store, in the child's terms; the address and length the error must name)
    "write": ("memory.write(GuestAddress(PAGE + 8), b'x' * 8)", PAGE + 8, 8),
    "write_slice": ("memory.write_slice(GuestAddress(2 * PAGE), b'x')", 2 * PAGE, 1),
    "write spanning into it": ("memory.write(GuestAddress(PAGE - 4), b'x' * 8)", PAGE, 4),
    "write_slice spanning into it": ("memory.write_slice(GuestAddress(PAGE - 4), b'x' * 8)",
                                     PAGE, 4),
    "write_obj_unaligned": ("memory.write_obj_unaligned(GuestAddress(PAGE + 3), c_uint32, 7)",
                            PAGE + 3, 4),
    "write_obj": ("memory.write_obj(AlignedGuestAddress.new(c_uint32, GuestAddress(PAGE + 4)), 7)",
                  PAGE + 4, 4),
    "write_atomic": ("memory.write_atomic(word, 1)", PAGE + 8, 8),
    "swap": ("memory.swap(word, 1)", PAGE + 8, 8),
    "compare_exchange": ("memory.compare_exchange(word, 0, 1)", PAGE + 8, 8),
    "fetch_add": ("memory.fetch_add(word, 1)", PAGE + 8, 8),
    "fetch_or": ("memory.fetch_or(word, 1)", PAGE + 8, 8),
    "slice write": ("memory.get_slice(GuestAddress(PAGE), 16).write(0, b'x')", PAGE, 1),
    "read_from": ("memory.read_from(GuestAddress(PAGE), zero, 16)", PAGE, 16),
}


@needs_8_byte_atomics
def test_read_only_region_refuses_every_store_in_a_subprocess() -> None:
    """Every store path raises ReadOnlyRegion naming the range, before any byte moves
    (also in the writable region in front of it); the file is unchanged; loads work.

    A store that reached the PROT_READ page would kill the interpreter: a child runs it.
    """
    attempts = "\n".join(f"    {name!r}: lambda: {call}," for name, (call, _, _)
                          in READ_ONLY_STORES.items())
    result = run_python_code(f"""
import json, os, tempfile
from ctypes import c_uint32, c_uint64
from vm_memory import (AlignedGuestAddress, GuestAddress, GuestMemoryMmap, GuestRegionMmap,
                       MmapRegion, ReadOnlyRegion)
PAGE = {PAGE}
backing = tempfile.TemporaryFile()
backing.write(bytes(range(256)) * (3 * PAGE // 256))
backing.flush()
memory = GuestMemoryMmap.from_regions([
    GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(0)),
    GuestRegionMmap(MmapRegion.from_file(backing.fileno(), 2 * PAGE, offset=PAGE,
                                         read_only=True), GuestAddress(PAGE)),
])
before = os.pread(backing.fileno(), 3 * PAGE, 0)
word = AlignedGuestAddress.new(c_uint64, GuestAddress(PAGE + 8))
zero = os.open("/dev/zero", os.O_RDONLY)
attempts = {{
{attempts}
}}
refused = {{}}
for name, attempt in attempts.items():
    try:
        attempt()
    except ReadOnlyRegion as error:
        refused[name] = [error.address, error.length]
print(json.dumps({{
    "refused": refused,
    "read_only_flag": memory.regions()[1].read_only,
    "writable_untouched": memory.read_bytes(GuestAddress(0), PAGE) == bytes(PAGE),
    "file_untouched": os.pread(backing.fileno(), 3 * PAGE, 0) == before,
    "first": memory.read_bytes(GuestAddress(PAGE), 16).hex(),
    "atomic": memory.read_atomic(word),
}}))
""")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["refused"] == {name: [address, length] for name, (_, address, length)
                                 in READ_ONLY_STORES.items()}
    assert report["read_only_flag"]
    assert report["writable_untouched"] and report["file_untouched"]
    assert bytes.fromhex(report["first"]) == bytes(range(16))
    assert report["atomic"] == int.from_bytes(bytes(range(8, 16)), sys.byteorder)


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


# ---- Construction refusals ------------------------------------------------------------


@pytest.mark.parametrize("size", [0, -1, -PAGE])
def test_empty_or_negative_mapping_is_refused(size: int) -> None:
    for build in (MmapRegion.anonymous, MmapRegion.memfd):
        with pytest.raises(InvalidRange):
            build(size)


def test_region_start_must_be_a_guest_address() -> None:
    with pytest.raises(TypeError):
        GuestRegionMmap(MmapRegion.anonymous(PAGE), 0x1000)  # type: ignore[arg-type]
