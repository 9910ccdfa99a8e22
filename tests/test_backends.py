"""Every host-backed region backend against the reference model, and what each promises.

Backends: anonymous private and shared memory, sealed memfds, a file at an offset
(shared and private), read-only file mappings, sparse no-reserve mappings and hugetlbfs.
Each runs the same random sequence of reads and writes through the library and through
the reference model (plain bytes per region); results, errors and the final bytes must
agree. The final bytes are read straight from each region's `mmap` and, for file-backed
memory, from the file itself, so the test also shows where the writes went.

What would crash the interpreter if the library got it wrong (stores on a read-only
mapping, a 1 TiB mapping) runs in a subprocess.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import random
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
from host_assumptions import needs_8_byte_atomics
from reference_model import ExpectedError, MemoryModel, ModelRegion

from vm_memory import (
    FileOffset,
    GuestAddress,
    GuestMemoryMmap,
    GuestRegionMmap,
    InvalidRange,
    MappingError,
    MappingPastEof,
    MmapRegion,
)

ROOT: Final = Path(__file__).resolve().parent.parent
PAGE: Final = mmap.PAGESIZE
LAYOUT: Final = ((0x10_000, 2 * PAGE), (0x10_000 + 2 * PAGE, PAGE), (0x40_000, 3 * PAGE))
"""Two adjacent regions, a hole, a third region: accesses cross both kinds of edge."""
FILE_OFFSET: Final = 2 * PAGE
"""Where file-backed regions start in their file (the file has other bytes before)."""
OPERATIONS: Final = 400


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter that imports this repository's `vm_memory`."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [environment.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environment,
                          capture_output=True, text=True, timeout=timeout, check=False)


# ---- Building each backend -----------------------------------------------------------


@dataclass
class Backend:
    """Guest memory of one backend, the model it must match and where its bytes live."""

    memory: GuestMemoryMmap
    model: MemoryModel
    files: list[tuple[int, int, int]] = field(default_factory=list[tuple[int, int, int]])
    """(fd, offset, region index) of file-backed regions, to read the file directly."""
    file_originals: dict[int, bytes] = field(default_factory=dict[int, bytes])
    """A file-backed region's file bytes before any access, by region index."""
    writes_reach_file: bool = True


def _random_content(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def _fill(region: GuestRegionMmap, content: bytes) -> None:
    region.mapping.mapping[:] = content


def _anonymous(rng: random.Random, *, shared: bool) -> Backend:
    memory = GuestMemoryMmap.from_ranges(
        [(GuestAddress(start), size) for start, size in LAYOUT], shared=shared)
    return _filled(memory, rng)


def _filled(memory: GuestMemoryMmap, rng: random.Random) -> Backend:
    regions: list[ModelRegion] = []
    for region in memory.regions():
        content = _random_content(rng, region.length)
        _fill(region, content)
        regions.append(ModelRegion(region.start_value, bytearray(content), False))
    return Backend(memory, MemoryModel(regions))


def _memfd(rng: random.Random) -> Backend:
    memory = GuestMemoryMmap.from_ranges_memfd(
        [(GuestAddress(start), size) for start, size in LAYOUT])
    backend = _filled(memory, rng)
    for index, region in enumerate(memory.regions()):
        assert region.mapping.fd is not None
        backend.files.append((region.mapping.fd, 0, index))
    return backend


def _file_backed(rng: random.Random, stack: list[Any], *, shared: bool,
                 read_only: bool) -> Backend:
    """Regions 0 and 2 come from files at FILE_OFFSET; region 1 is anonymous."""
    ranges: list[tuple[GuestAddress, int, FileOffset | None]] = []
    originals: dict[int, bytes] = {}
    fds: dict[int, int] = {}
    for index, (start, size) in enumerate(LAYOUT):
        if index == 1:
            ranges.append((GuestAddress(start), size, None))
            continue
        backing = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the fixture)
        stack.append(backing)
        whole = _random_content(rng, FILE_OFFSET + size + PAGE)
        backing.write(whole)
        backing.flush()
        originals[index] = whole[FILE_OFFSET:FILE_OFFSET + size]
        fds[index] = backing.fileno()
        ranges.append((GuestAddress(start), size, FileOffset(backing.fileno(), FILE_OFFSET)))
    memory = GuestMemoryMmap.from_ranges_with_files(ranges, shared=shared,
                                                    read_only=read_only)
    regions: list[ModelRegion] = []
    for index, region in enumerate(memory.regions()):
        if index in originals:
            content = originals[index]
            assert bytes(region.mapping.mapping[:]) == content, "the file's bytes at offset"
            assert region.read_only == read_only
        else:
            content = _random_content(rng, region.length)
            _fill(region, content)
            assert not region.read_only
        regions.append(ModelRegion(region.start_value, bytearray(content), region.read_only))
    return Backend(memory, MemoryModel(regions),
                   files=[(fd, FILE_OFFSET, index) for index, fd in fds.items()],
                   file_originals=originals, writes_reach_file=shared)


def _sparse(rng: random.Random) -> Backend:
    memory = GuestMemoryMmap.from_regions(
        GuestRegionMmap(MmapRegion.anonymous(size, no_reserve=True), GuestAddress(start))
        for start, size in LAYOUT)
    return _filled(memory, rng)


BACKENDS: Final = ("anonymous-private", "anonymous-shared", "memfd", "file-shared",
                   "file-private", "file-read-only", "sparse-no-reserve")


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    rng = random.Random(f"backend-{request.param}")
    stack: list[Any] = []
    builders: dict[str, Callable[[], Backend]] = {
        "anonymous-private": lambda: _anonymous(rng, shared=False),
        "anonymous-shared": lambda: _anonymous(rng, shared=True),
        "memfd": lambda: _memfd(rng),
        "file-shared": lambda: _file_backed(rng, stack, shared=True, read_only=False),
        "file-private": lambda: _file_backed(rng, stack, shared=False, read_only=False),
        "file-read-only": lambda: _file_backed(rng, stack, shared=True, read_only=True),
        "sparse-no-reserve": lambda: _sparse(rng),
    }
    try:
        yield builders[request.param]()
    finally:
        for backing in stack:
            backing.close()


# ---- The model comparison ------------------------------------------------------------


def agree(library_call: Callable[[], object], model_call: Callable[[], object]) -> None:
    """The library returns what the model returns, or raises the error (and facts) it names."""
    try:
        expected = model_call()
    except ExpectedError as error:
        with pytest.raises(error.error_type) as raised:
            library_call()
        for name, value in error.facts.items():
            assert getattr(raised.value, name) == value, (name, raised.value)
        return
    assert library_call() == expected


def _address(rng: random.Random) -> int:
    """Near a region edge, inside a region, or in the hole."""
    start, size = rng.choice(LAYOUT)
    return rng.choice([start, start + size, start - 1, start + size - 1,
                       start + rng.randrange(size), 0x30_000, start - rng.randrange(64)])


def _one_operation(backend: Backend, rng: random.Random) -> None:
    memory, model = backend.memory, backend.model
    address = _address(rng)
    length = rng.choice([1, 2, 7, PAGE, 3 * PAGE, rng.randrange(1, 4 * PAGE)])
    data = rng.randbytes(length)
    operation = rng.choice(["read", "write", "read_slice", "write_slice", "read_obj",
                            "write_obj"])
    if operation == "read":
        def library_read() -> bytes:
            buffer = bytearray(length)
            count = memory.read(GuestAddress(address), buffer)
            return bytes(buffer[:count])
        agree(library_read, lambda: model.read(address, length))
    elif operation == "write":
        agree(lambda: memory.write(GuestAddress(address), data),
              lambda: model.write(address, data))
    elif operation == "read_slice":
        agree(lambda: memory.read_bytes(GuestAddress(address), length),
              lambda: model.read_slice(address, length))
    elif operation == "write_slice":
        agree(lambda: memory.write_slice(GuestAddress(address), data),
              lambda: model.write_slice(address, data))
    elif operation == "read_obj":
        agree(lambda: memory.read_obj_unaligned(GuestAddress(address), ctypes.c_uint32),
              lambda: int.from_bytes(model.read_obj_unaligned(address, ctypes.c_uint32),
                                     sys.byteorder))
    else:
        value = rng.randrange(1 << 32)
        agree(lambda: memory.write_obj_unaligned(GuestAddress(address), ctypes.c_uint32,
                                                 value),
              lambda: model.write_obj_unaligned(address, ctypes.c_uint32, value))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_backend_agrees_with_reference_model(backend: Backend) -> None:
    """Random reads and writes agree with the model; the mmaps hold the model's bytes."""
    rng = random.Random(OPERATIONS)
    for _ in range(OPERATIONS):
        _one_operation(backend, rng)
    real = tuple(bytes(region.mapping.mapping[:]) for region in backend.memory.regions())
    assert real == backend.model.snapshot()


@pytest.mark.parametrize("backend", ["memfd", "file-shared", "file-private", "file-read-only"],
                         indirect=True)
def test_file_backed_writes_reach_the_file_only_when_shared(backend: Backend) -> None:
    """A shared mapping writes through to its file (at its offset); a private one never."""
    rng = random.Random(7)
    for _ in range(OPERATIONS):
        _one_operation(backend, rng)
    assert backend.files
    for fd, offset, index in backend.files:
        region = backend.memory.regions()[index]
        on_file = os.pread(fd, region.length, offset)
        if backend.writes_reach_file:
            assert on_file == bytes(backend.model.regions[index].data)
        else:
            assert on_file == backend.file_originals[index]
            assert bytes(backend.model.regions[index].data) != on_file, \
                "the random writes changed the private copy"


# ---- Private vs shared across fork ---------------------------------------------------


@pytest.mark.parametrize("shared", [False, True])
def test_fork_child_writes_visible_only_in_shared_memory(shared: bool) -> None:
    """MAP_SHARED memory is the same pages in a forked child; MAP_PRIVATE is copy-on-write."""
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0x1000), PAGE)], shared=shared)
    memory.write_slice(GuestAddress(0x1000), b"parent")
    pid = os.fork()
    if pid == 0:  # the child: write and leave at once, without running pytest's cleanup
        code = 0
        try:
            memory.write_slice(GuestAddress(0x1000), b"child!")
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert memory.read_bytes(GuestAddress(0x1000), 6) == (b"child!" if shared else b"parent")


# ---- Memfd seals ---------------------------------------------------------------------


def test_memfd_is_sealed_against_shrinking_and_growing() -> None:
    """Truncating the memfd (which would SIGBUS us) fails; its size stays put."""
    region = MmapRegion.memfd(2 * PAGE)
    assert region.fd is not None and region.shared
    for size in (0, PAGE, 4 * PAGE):
        with pytest.raises(PermissionError):
            os.ftruncate(region.fd, size)
    assert os.fstat(region.fd).st_size == 2 * PAGE
    # A duplicate (as a peer would hold after SCM_RIGHTS) is sealed just the same.
    duplicate = os.dup(region.fd)
    try:
        with pytest.raises(PermissionError):
            os.ftruncate(duplicate, PAGE)
    finally:
        os.close(duplicate)
    memory = GuestMemoryMmap.from_regions([GuestRegionMmap(region, GuestAddress(0))])
    memory.write_slice(GuestAddress(2 * PAGE - 4), b"tail")
    assert os.pread(region.fd, 4, 2 * PAGE - 4) == b"tail"


# ---- Refusals before mapping ---------------------------------------------------------


def test_file_shorter_than_region_is_refused_before_mapping() -> None:
    """MappingPastEof names the sizes; nothing is mapped and the file is unchanged."""
    with tempfile.TemporaryFile() as backing:
        backing.write(b"x" * (3 * PAGE))
        backing.flush()
        fd = backing.fileno()
        with pytest.raises(MappingPastEof) as raised:
            MmapRegion.from_file(fd, 2 * PAGE, offset=2 * PAGE)
        assert (raised.value.size, raised.value.file_offset, raised.value.file_size) == \
            (2 * PAGE, 2 * PAGE, 3 * PAGE)
        assert isinstance(raised.value, MappingError)
        with pytest.raises(MappingPastEof):
            GuestMemoryMmap.from_ranges_with_files(
                [(GuestAddress(0), 4 * PAGE, FileOffset(fd, 0))])
        assert os.fstat(fd).st_size == 3 * PAGE
        # Exactly fitting is fine, and shows the file's bytes at the offset.
        region = MmapRegion.from_file(fd, PAGE, offset=2 * PAGE)
        assert bytes(region.mapping[:1]) == b"x"


def test_bad_sizes_and_offsets_are_refused() -> None:
    with pytest.raises(InvalidRange):
        MmapRegion.anonymous(0)
    with pytest.raises(InvalidRange):
        MmapRegion.memfd(-PAGE)
    with pytest.raises(InvalidRange):  # beyond the address space (1 TiB is, on 32 bits)
        MmapRegion.anonymous(sys.maxsize + 1, no_reserve=True)
    with tempfile.TemporaryFile() as backing:
        os.ftruncate(backing.fileno(), 4 * PAGE)
        with pytest.raises(InvalidRange):
            MmapRegion.from_file(backing.fileno(), PAGE, offset=100)
        with pytest.raises(InvalidRange):
            MmapRegion.from_file(backing.fileno(), PAGE, offset=-PAGE)


# ---- Read-only mappings: refusals that must never reach the hardware ------------------


@needs_8_byte_atomics
def test_read_only_mapping_refuses_every_store_in_a_subprocess() -> None:
    """Every store path raises ReadOnlyRegion on a read-only file mapping; none segfaults.

    A store reaching a PROT_READ page would kill the interpreter, hence the subprocess.
    """
    result = run_python(f"""
        import ctypes, json, os, tempfile
        from vm_memory import (AlignedGuestAddress, GuestAddress, GuestMemoryMmap,
                               FileOffset, ReadOnlyRegion)
        backing = tempfile.TemporaryFile()
        backing.write(bytes(range(256)) * {4 * PAGE // 256})
        backing.flush()
        memory = GuestMemoryMmap.from_ranges_with_files(
            [(GuestAddress(0), {2 * PAGE}, FileOffset(backing.fileno(), {PAGE}))],
            read_only=True)
        word = AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(8))
        attempts = {{
            "write": lambda: memory.write(GuestAddress(1), b"x"),
            "write_slice": lambda: memory.write_slice(GuestAddress(1), b"x"),
            "write_obj": lambda: memory.write_obj(word, 1),
            "write_obj_unaligned": lambda: memory.write_obj_unaligned(
                GuestAddress(3), ctypes.c_uint32, 1),
            "write_atomic": lambda: memory.write_atomic(word, 1),
            "swap": lambda: memory.swap(word, 1),
            "compare_exchange": lambda: memory.compare_exchange(word, 0, 1),
            "fetch_add": lambda: memory.fetch_add(word, 1),
            "fetch_or": lambda: memory.fetch_or(word, 1),
            "slice_write": lambda: memory.get_slice(GuestAddress(0), 16).write(0, b"x"),
            "read_from": lambda: memory.read_from(GuestAddress(0), os.open("/dev/zero",
                                                  os.O_RDONLY), 16),
        }}
        refused = []
        for name, attempt in attempts.items():
            try:
                attempt()
            except ReadOnlyRegion:
                refused.append(name)
        print(json.dumps({{"refused": refused, "names": list(attempts),
                          "first": memory.read_bytes(GuestAddress(0), 16).hex(),
                          "atomic": memory.read_atomic(word)}}))
    """)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["refused"] == report["names"]
    assert bytes.fromhex(report["first"]) == bytes(range(16))
    assert report["atomic"] == int.from_bytes(bytes(range(8, 16)), sys.byteorder)


# ---- Sparse and huge ------------------------------------------------------------------


@pytest.mark.skipif(sys.maxsize < 1 << 40,
                    reason="a 1 TiB guest cannot exist in a 32-bit address space (mapping "
                           "one is a typed error: test_bad_sizes_and_offsets_are_refused)")
def test_one_tib_sparse_guest_stays_small_in_a_subprocess() -> None:
    """A 1 TiB no-reserve guest, written at its first and last page, stays under 100 MiB RSS."""
    result = run_python("""
        import json
        from vm_memory import GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion

        def rss_kib(field="VmRSS"):
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
            raise RuntimeError(field)

        size = 1 << 40
        before = rss_kib()
        memory = GuestMemoryMmap.from_regions(
            [GuestRegionMmap(MmapRegion.anonymous(size, no_reserve=True), GuestAddress(0))])
        page = 4096
        memory.write_slice(GuestAddress(0), b"first" * (page // 5))
        memory.write_slice(GuestAddress(size - page), b"last!" * (page // 5))
        top = memory.last_addr().raw_value()
        print(json.dumps({
            "top": top, "before": before, "after": rss_kib(), "peak": rss_kib("VmHWM"),
            "first": memory.read_bytes(GuestAddress(0), 5).decode(),
            "last": memory.read_bytes(GuestAddress(size - page), 5).decode(),
            "middle": memory.read_bytes(GuestAddress(size // 2), 4).hex(),
        }))
    """)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["top"] == (1 << 40) - 1
    assert (report["first"], report["last"], report["middle"]) == ("first", "last!", "00000000")
    assert report["after"] < 100 * 1024, f"VmRSS {report['after']} KiB"
    assert report["peak"] < 100 * 1024, f"VmHWM {report['peak']} KiB"


def _free_huge_pages() -> tuple[int, int]:
    """(free huge pages, huge page size in bytes) from /proc/meminfo."""
    free, size_kib = 0, 2048
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("HugePages_Free:"):
                free = int(line.split()[1])
            elif line.startswith("Hugepagesize:"):
                size_kib = int(line.split()[1])
    return free, size_kib * 1024


def test_huge_pages_map_where_reserved_and_fail_clearly_where_not() -> None:
    """With free huge pages the mapping works; without, a MappingError says what to do."""
    free, huge_page = _free_huge_pages()
    if free >= 1:
        region = MmapRegion.anonymous(huge_page, huge_pages=True)
        memory = GuestMemoryMmap.from_regions([GuestRegionMmap(region, GuestAddress(0))])
        memory.write_slice(GuestAddress(huge_page - 4), b"huge")
        assert memory.read_bytes(GuestAddress(huge_page - 4), 4) == b"huge"
    else:
        with pytest.raises(MappingError) as raised:
            MmapRegion.anonymous(huge_page, huge_pages=True)
        assert raised.value.size == huge_page
        assert "nr_hugepages" in str(raised.value)
