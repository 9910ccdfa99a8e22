"""A region's `read_only` agrees with its memory, its views obey it, and nothing that
the fast paths derive from can change after construction.

A mapping without write access wrapped as a writable region would let `write_atomic`
store through libatomic into a read-only page: a SIGSEGV. A writable mapping flagged
read-only must hand out only read-only views, or the file changes behind the flag.
"""

from __future__ import annotations

import mmap
import tempfile
import textwrap
from typing import Any, Final

import pytest
from host_assumptions import wide_atomic
from support import run_python

from vm_memory import (
    DeviceRegion,
    FileRegion,
    GuestAddress,
    GuestMemory,
    GuestMemoryMmap,
    GuestRegionMmap,
    MappingError,
    MmapRegion,
    ReadOnlyRegion,
)

PAGE: Final = mmap.PAGESIZE


def test_a_mapping_without_write_access_cannot_be_a_writable_region() -> None:
    with tempfile.TemporaryFile() as handle:
        handle.truncate(PAGE)
        mapping = mmap.mmap(handle.fileno(), PAGE, prot=mmap.PROT_READ)
        with pytest.raises(MappingError, match="no write access"):
            MmapRegion(mapping, read_only=False, shared=True)
        region = MmapRegion(mapping, read_only=True, shared=True)
        memory = GuestMemoryMmap.from_regions([GuestRegionMmap(region, GuestAddress(0))])
        assert memory.read_atomic(wide_atomic(8)) == 0
        with pytest.raises(ReadOnlyRegion):
            memory.write_atomic(wide_atomic(8), 1)


WRITABLE_FLAG_ON_READ_ONLY_MAP: Final = textwrap.dedent('''
    import ctypes, mmap, os, sys
    from vm_memory import *
    fd = os.memfd_create("ro")
    os.ftruncate(fd, 4096)
    mapping = mmap.mmap(fd, 4096, prot=mmap.PROT_READ)
    if sys.argv[1] == "library":
        try:
            MmapRegion(mapping, read_only=False, shared=True)
        except MappingError:
            print("refused")
            sys.exit(0)
    # the control: what a wrongly trusted flag leads to, a libatomic store to the page
    from vm_memory.buffers import buffer_address
    store = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int)(
        ("__atomic_store_8", ctypes.CDLL("libatomic.so.1")))
    store(buffer_address(mapping), 1, 5)
    print("stored")
''')


@pytest.mark.parametrize("who", ["library", "control"])
def test_a_store_never_reaches_a_read_only_page(who: str) -> None:
    child = run_python("-c", WRITABLE_FLAG_ON_READ_ONLY_MAP, who, timeout=120)
    if who == "library":
        assert (child.returncode, child.stdout.strip()) == (0, "refused"), child.stderr
    else:
        assert child.returncode == -11, (child.returncode, child.stderr)


def test_a_writable_mapping_flagged_read_only_gives_read_only_views() -> None:
    with tempfile.TemporaryFile() as handle:
        handle.write(b"original".ljust(PAGE, b"\0"))
        handle.flush()
        region = MmapRegion.from_file(handle.fileno(), PAGE)  # writable
        mapping = region.mapping
        wrapped = MmapRegion(mapping, read_only=True, shared=True)
        placed = GuestRegionMmap(wrapped, GuestAddress(0))
        memory = GuestMemoryMmap.from_regions([placed])
        views = [wrapped.view, placed.buffer, memory.get_slice(GuestAddress(0), 8).as_memoryview()]
        for view in views:
            assert view is not None and view.readonly
            with pytest.raises(TypeError):
                view[0] = 0x58
        with pytest.raises(ReadOnlyRegion):
            memory.write_slice(GuestAddress(0), b"X")
        with pytest.raises(ReadOnlyRegion):
            memory.write_atomic(wide_atomic(0), 1)
        handle.seek(0)
        assert handle.read(8) == b"original"


@pytest.mark.parametrize("name", ["read_only", "buffer", "host_address", "start", "start_value",
                                  "length", "dirty", "end_value", "read_limit", "write_limit",
                                  "atomic_read_limit", "atomic_write_limit", "atomic_delta",
                                  "mapping"])
def test_inputs_of_the_fast_paths_are_fixed(name: str) -> None:
    region = GuestRegionMmap(MmapRegion.anonymous(PAGE, shared=True), GuestAddress(0))
    before = getattr(region, name)
    with pytest.raises(AttributeError, match="fixed"):
        setattr(region, name, None if name == "buffer" else 0)
    assert getattr(region, name) is before


@pytest.mark.parametrize("name", ["read_only", "host_address", "view", "mapping", "size", "fd"])
def test_a_mappings_facts_are_fixed(name: str) -> None:
    region = MmapRegion.memfd(PAGE)
    with pytest.raises(AttributeError, match="fixed"):
        setattr(region, name, 0)


def test_other_region_kinds_keep_their_flag_too() -> None:
    class Device:
        def read(self, offset: int, size: int) -> bytes:
            return bytes(size)

        def write(self, offset: int, data: bytes) -> None:
            raise AssertionError("a read-only device region was written")

    with tempfile.TemporaryFile() as handle:
        handle.truncate(PAGE)
        regions: list[Any] = [DeviceRegion(Device(), GuestAddress(0), PAGE, read_only=True),
                              FileRegion(handle.fileno(), GuestAddress(PAGE), PAGE,
                                         read_only=True)]
        for region in regions:
            with pytest.raises(AttributeError):
                region.read_only = False
        memory = GuestMemory(regions)
        for start in (0, PAGE):
            with pytest.raises(ReadOnlyRegion):
                memory.write_slice(GuestAddress(start), b"x")
        handle.seek(0)
        assert handle.read() == bytes(PAGE)
