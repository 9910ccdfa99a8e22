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

import json
import mmap
import os
import random
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import pytest
from reference_model import MemoryModel, ModelRegion
from support import random_access, run_python_code

from vm_memory import (
    FileOffset,
    GuestAddress,
    GuestMemoryMmap,
    GuestRegionMmap,
    MappingError,
    MmapRegion,
    mmap_region,
)

PAGE: Final = mmap.PAGESIZE
LAYOUT: Final = ((0x10_000, 2 * PAGE), (0x10_000 + 2 * PAGE, PAGE), (0x40_000, 3 * PAGE))
"""Two adjacent regions, a hole, a third region: accesses cross both kinds of edge."""
FILE_OFFSET: Final = 2 * PAGE
"""Where file-backed regions start in their file (the file has other bytes before)."""
OPERATIONS: Final = 400


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
    region.mapping.view[:] = content


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
            assert bytes(region.mapping.view[:]) == content, "the file's bytes at offset"
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


def _address(rng: random.Random) -> int:
    """Near a region edge, inside a region, or in the hole."""
    start, size = rng.choice(LAYOUT)
    return rng.choice([start, start + size, start - 1, start + size - 1,
                       start + rng.randrange(size), 0x30_000, start - rng.randrange(64)])


def _one_operation(backend: Backend, rng: random.Random) -> None:
    length = rng.choice([1, 2, 7, PAGE, 3 * PAGE, rng.randrange(1, 4 * PAGE)])
    random_access(backend.memory, backend.model, rng, _address(rng), length)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_backend_agrees_with_reference_model(backend: Backend) -> None:
    """Random reads and writes agree with the model; the mmaps hold the model's bytes."""
    rng = random.Random(OPERATIONS)
    for _ in range(OPERATIONS):
        _one_operation(backend, rng)
    real = tuple(bytes(region.mapping.view[:]) for region in backend.memory.regions())
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


# ---- Sparse and huge ------------------------------------------------------------------


@pytest.mark.skipif(sys.maxsize < 1 << 40,
                    reason="a 1 TiB guest cannot exist in a 32-bit address space (mapping "
                           "one is a typed error: test_hostile_input.py::"
                           "test_impossible_sizes_are_refused_without_a_leak)")
def test_one_tib_sparse_guest_stays_small_in_a_subprocess() -> None:
    """A 1 TiB no-reserve guest, written at its first and last page, stays under 100 MiB RSS."""
    result = run_python_code("""
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


@pytest.mark.parametrize(("machine", "flags"), [
    ("x86_64", (0x4000, 0x40000)), ("i686", (0x4000, 0x40000)),
    ("aarch64", (0x4000, 0x40000)), ("armv7l", (0x4000, 0x40000)),
    ("s390x", (0x4000, 0x40000)), ("riscv64", (0x4000, 0x40000)),
    ("loongarch64", (0x4000, 0x40000)),
    ("mips", (0x0400, 0x80000)), ("mips64", (0x0400, 0x80000)), ("xtensa", (0x0400, 0x80000)),
    ("ppc64le", (0x0040, 0x40000)), ("ppc", (0x0040, 0x40000)), ("sparc64", (0x0040, 0x40000)),
    ("alpha", (0x10000, 0x100000)), ("parisc64", (0x4000, 0x80000)),
    ("vax", (None, None)), ("", (None, None)),
])
def test_map_flags_are_each_architectures_own(machine: str, flags: tuple[int | None, ...]) -> None:
    """(MAP_NORESERVE, MAP_HUGETLB) as each architecture's uapi asm/mman.h defines them;
    an architecture the table lacks gets no value at all, never x86's."""
    assert mmap_region._linux_map_flags(machine) == flags  # pyright: ignore[reportPrivateUsage]


def test_an_unknown_map_flag_is_a_typed_error_not_a_guess(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the flag's value is unknown, asking for it is a MappingError naming it;
    a mapping that does not need it still works."""
    monkeypatch.setattr(mmap_region, "MAP_NORESERVE", None)
    monkeypatch.setattr(mmap_region, "MAP_HUGETLB", None)
    with pytest.raises(MappingError, match=r"MAP_NORESERVE's value on .* is unknown"):
        MmapRegion.anonymous(PAGE)
    with pytest.raises(MappingError, match=r"MAP_HUGETLB's value on .* is unknown"):
        MmapRegion.anonymous(PAGE, huge_pages=True)
    memory = GuestMemoryMmap.from_regions(
        [GuestRegionMmap(MmapRegion.anonymous(PAGE, no_reserve=False), GuestAddress(0))])
    memory.write_slice(GuestAddress(0), b"kept")
    assert memory.read_bytes(GuestAddress(0), 4) == b"kept"


def _uncommittable_size() -> int:
    """Twice what the host could commit (RAM and swap), in whole GiB: the kernel's
    heuristic overcommit refuses one such mapping unless it reserves nothing."""
    fields: dict[str, int] = {}
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            name, _, value = line.partition(":")
            fields[name] = int(value.split()[0]) * 1024
    size = 2 * (fields["MemTotal"] + fields["SwapTotal"])
    return -(-size // (1 << 30)) << 30


def _overcommit_mode() -> str:
    with open("/proc/sys/vm/overcommit_memory", encoding="ascii") as mode:
        return mode.read().strip()


@pytest.mark.skipif(_overcommit_mode() != "0",
                    reason=f"vm.overcommit_memory is {_overcommit_mode()}: only the default "
                           f"heuristic (0) refuses a mapping larger than RAM and swap that "
                           f"reserves, and lets one that reserves nothing map")
@pytest.mark.skipif(sys.maxsize < _uncommittable_size(),
                    reason=f"twice this host's RAM and swap ({_uncommittable_size()} bytes) "
                           f"does not fit a 32-bit address space")
def test_no_reserve_is_what_maps_more_than_the_host_could_commit() -> None:
    """The MAP_NORESERVE the library passes is the architecture's real one (on MIPS and
    POWER x86's value is another flag, and the mapping would be refused): a mapping of
    twice RAM and swap maps with no_reserve and is refused without it (the control). In
    a subprocess: under qemu-user the emulator's own page table for it is large."""
    size = _uncommittable_size()
    result = run_python_code(f"""
        import json
        from vm_memory import GuestAddress, GuestMemoryMmap, GuestRegionMmap, MappingError
        from vm_memory import MmapRegion

        try:
            MmapRegion.anonymous({size}, no_reserve=False)
            reserved = "mapped"
        except MappingError as error:
            reserved = str(error)
        region = MmapRegion.anonymous({size}, no_reserve=True)
        memory = GuestMemoryMmap.from_regions([GuestRegionMmap(region, GuestAddress(0))])
        memory.write_slice(GuestAddress({size} - 4), b"last")
        print(json.dumps({{"reserved": reserved,
                          "last": memory.read_bytes(GuestAddress({size} - 4), 4).decode()}}))
    """)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["last"] == "last"
    assert report["reserved"].startswith(f"cannot map {size} bytes"), report["reserved"]
