"""Plain (non-atomic) access against raw `struct` and `memoryview` on the same mmap.

Rows: `read_obj_unaligned`/`write_obj_unaligned` of u32/u64 against a bare
`struct.Struct.unpack_from`/`pack_into` (target ≤ 3 times); `read_slice`/`write_slice` of
4 KiB, 1 MiB and 64 MiB against a raw memoryview slice copy (target ≥ 80 % of raw
bandwidth); region lookup with 100 and 10,000 one-page regions against one region
spanning the same addresses, read at the same random addresses, so both sides touch the
same data pages (no target: issue 2's "≤ 2 times the cost of 1" at 10,000 was below what
separate mappings cost the memory system itself, and issue 13 restated it as the lookup
against bare `struct` reads over the same 10,000 mmaps, a row of
`benchmarks/bench_paths.py`); beside it, what separate mappings cost the memory system
alone (the same reads through bare `struct`, no lookup).

Run alone with `python -m benchmarks.bench_access [--quick]`.
"""

from __future__ import annotations

import ctypes
import importlib
import mmap
import random
import struct
import sys
from typing import Any

from benchmarks.common import Case, Comparison, Skipped, run_module
from vm_memory import GuestAddress, GuestMemoryMmap

PAGE = mmap.PAGESIZE
MEMORY_START = 0x1_0000
BULK_REGION_SIZE = 64 << 20
BULK_SIZES = ((4 << 10, "4 KiB"), (1 << 20, "1 MiB"), (64 << 20, "64 MiB"))
TYPED_OFFSET = 0x41
"""A deliberately odd offset: these are the unaligned accessors."""
REGION_COUNTS = (1, 100, 10_000)
LOOKUP_ADDRESSES = 4096
SCALARS = ((ctypes.c_uint32, "u32", "<I", 0x1234_5678),
           (ctypes.c_uint64, "u64", "<Q", 0x1234_5678_9ABC_DEF0))


def typed_comparisons(memory: GuestMemoryMmap) -> list[Comparison]:
    """read/write_obj_unaligned vs bare struct calls on the region's own mmap."""
    region = memory.regions()[0]
    raw_map = region.mapping.mapping
    address = GuestAddress(MEMORY_START + TYPED_OFFSET)
    comparisons: list[Comparison] = []
    for ctype, short, fmt, value in SCALARS:
        names: dict[str, Any] = {"memory": memory, "address": address, "ctype": ctype,
                                 "codec": struct.Struct(fmt), "raw_map": raw_map,
                                 "offset": TYPED_OFFSET, "value": value}
        comparisons.append(Comparison(
            f"read_obj_unaligned {short}",
            Case("ours", "read(address, ctype)", names, "read = memory.read_obj_unaligned"),
            Case(f"Struct('{fmt}').unpack_from", "unpack(raw_map, offset)", names,
                 "unpack = codec.unpack_from"),
            target=3.0))
        comparisons.append(Comparison(
            f"write_obj_unaligned {short}",
            Case("ours", "write(address, ctype, value)", names,
                 "write = memory.write_obj_unaligned"),
            Case(f"Struct('{fmt}').pack_into", "pack(raw_map, offset, value)", names,
                 "pack = codec.pack_into"),
            target=None))  # issue 2 sets its target on reads only
    return comparisons


def bulk_comparisons(memory: GuestMemoryMmap) -> list[Comparison]:
    """read_slice/write_slice vs a raw memoryview slice copy, same bytes, same mmap.

    The raw read copies into a memoryview of the destination: assigning a memoryview to
    a `bytearray` slice first copies it into a temporary bytearray (CPython's
    bytearray_ass_subscript), which would make the baseline several times slower.
    """
    raw_view = memoryview(memory.regions()[0].mapping.mapping)
    address = GuestAddress(MEMORY_START)
    comparisons: list[Comparison] = []
    for size, label in BULK_SIZES:
        destination = bytearray(size)  # touched: both sides copy into resident pages
        source = bytes(random.Random(size).getrandbits(8) for _ in range(256)) * (size // 256)
        names: dict[str, Any] = {"memory": memory, "address": address, "raw": raw_view,
                                 "destination": destination, "source": source, "size": size,
                                 "destination_view": memoryview(destination)}
        comparisons.append(Comparison(
            f"read_slice {label}",
            Case("ours", "read_slice(address, destination)", names,
                 "read_slice = memory.read_slice"),
            Case("memoryview slice copy", "destination_view[:] = raw[0:size]", names),
            kind="bandwidth", target=0.8, bytes_per_op=size))
        comparisons.append(Comparison(
            f"write_slice {label}",
            Case("ours", "write_slice(address, source)", names,
                 "write_slice = memory.write_slice"),
            Case("memoryview slice copy", "raw[0:size] = source", names),
            kind="bandwidth", target=0.8, bytes_per_op=size))
        if size == BULK_SIZES[0][0]:
            comparisons.append(Comparison(
                f"floor for {label}: a Python function that only copies",
                Case("def copy(...): memoryview(destination)[:] = raw[0:size]",
                     "copy(raw, destination, size)", {**names, "copy": _only_copy}),
                Case("memoryview slice copy", "destination_view[:] = raw[0:size]", names),
                kind="bandwidth", bytes_per_op=size))
    return comparisons


def _only_copy(raw: memoryview, destination: bytearray, size: int) -> None:
    """What any read_slice-shaped Python call costs at least: the call, a view of the
    caller's buffer, the copy. Its fraction of raw bandwidth bounds ours at this size."""
    memoryview(destination)[:] = raw[0:size]


def page_regions(count: int) -> GuestMemoryMmap:
    """`count` one-page regions with a one-page hole after each, every page touched."""
    memory = GuestMemoryMmap.from_ranges(
        [(GuestAddress(MEMORY_START + 2 * PAGE * index), PAGE) for index in range(count)])
    for region in memory.regions():
        region.mapping.mapping[0] = 1  # fault the page in: no shared zero page
    return memory


def spanning_region(count: int) -> GuestMemoryMmap:
    """One region over the span of `page_regions(count)`, the same pages touched."""
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(MEMORY_START), 2 * PAGE * count)])
    mapping = memory.regions()[0].mapping.mapping
    for index in range(count):
        mapping[2 * PAGE * index] = 1
    return memory


def lookup_addresses(count: int) -> list[int]:
    """Random u32-aligned guest addresses inside the `count` one-page regions, seeded."""
    chooser = random.Random(count)
    return [MEMORY_START + 2 * PAGE * chooser.randrange(count) + chooser.randrange(0, PAGE - 4, 4)
            for _ in range(LOOKUP_ADDRESSES)]


def lookup_case(memory: GuestMemoryMmap, addresses: list[int], label: str) -> Case:
    """read_obj_unaligned u32 at the given addresses."""
    names: dict[str, Any] = {"memory": memory, "ctype": ctypes.c_uint32,
                             "addresses": [GuestAddress(value) for value in addresses]}
    return Case(label, "for address in addresses:\n    read(address, ctype)", names,
                "read = memory.read_obj_unaligned", ops_per_stmt=len(addresses),
                overhead_stmt="for address in addresses:\n    pass")


def raw_touch_case(memory: GuestMemoryMmap, addresses: list[int], label: str) -> Case:
    """The same reads with the mmap already known: what the memory system alone costs."""
    targets: list[tuple[mmap.mmap, int]] = []
    for value in addresses:
        region = memory.find_region(GuestAddress(value))
        assert region is not None
        targets.append((region.mapping.mapping, value - region.start_value))
    names: dict[str, Any] = {"targets": targets, "codec": struct.Struct("<I")}
    return Case(label, "for mapping, offset in targets:\n    unpack(mapping, offset)", names,
                "unpack = codec.unpack_from", ops_per_stmt=len(targets),
                overhead_stmt="for mapping, offset in targets:\n    pass")


LOOKUP_HARDWARE_ROW = "memory system: Struct.unpack_from, 10,000 one-page mmaps vs one mmap"


def lookup_comparisons() -> list[Comparison]:
    """Lookup cost with 100 and 10,000 regions against 1 region over the same addresses.

    One more row (no target) shows what separate mappings cost the memory system alone:
    the same reads through bare `struct` on already-known mmaps.
    """
    rows: list[Comparison] = []
    for count in REGION_COUNTS[1:]:
        addresses = lookup_addresses(count)
        many, one = page_regions(count), spanning_region(count)
        rows.append(Comparison(
            f"lookup: read_obj_unaligned u32, {count:,} regions",
            lookup_case(many, addresses, f"{count:,} regions"),
            lookup_case(one, addresses, "1 region, same addresses"), target=None))
        if count == REGION_COUNTS[-1]:
            rows.append(Comparison(LOOKUP_HARDWARE_ROW,
                                   raw_touch_case(many, addresses, f"{count:,} mmaps"),
                                   raw_touch_case(one, addresses, "1 mmap")))
    return rows


UNICORN_ROWS = "unicorn mem_read/mem_write u32 (alternative)"


def unicorn_comparisons(memory: GuestMemoryMmap) -> tuple[list[Comparison], list[Skipped]]:
    """unicorn's mem_read/mem_write on the same mmap (mapped with mem_map_ptr), if installed.

    Same work as our typed rows: 4 bytes to or from a Python int, against the same raw
    `struct` baseline. Not a target, a comparison with the alternative.
    """
    try:
        unicorn: Any = importlib.import_module("unicorn")
    except ImportError:
        return [], [Skipped(UNICORN_ROWS, "unicorn is not installed (optional)")]
    region = memory.regions()[0]
    try:
        emulator = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        emulator.mem_map_ptr(MEMORY_START, region.length, unicorn.UC_PROT_ALL,
                             region.host_address)
    except Exception as error:  # any failure of an optional third-party set-up
        return [], [Skipped(UNICORN_ROWS, f"unicorn set-up failed: {error!r}")]
    names: dict[str, Any] = {"emulator": emulator, "guest": MEMORY_START + TYPED_OFFSET,
                             "codec": struct.Struct("<I"), "raw_map": region.mapping.mapping,
                             "offset": TYPED_OFFSET, "value": 0x1234_5678}
    return [
        Comparison("unicorn mem_read u32 (alternative)",
                   Case("unicorn", "from_bytes(mem_read(guest, 4), 'little')", names,
                        "mem_read = emulator.mem_read; from_bytes = int.from_bytes"),
                   Case("Struct('<I').unpack_from", "unpack(raw_map, offset)", names,
                        "unpack = codec.unpack_from")),
        Comparison("unicorn mem_write u32 (alternative)",
                   Case("unicorn", "mem_write(guest, value.to_bytes(4, 'little'))", names,
                        "mem_write = emulator.mem_write"),
                   Case("Struct('<I').pack_into", "pack(raw_map, offset, value)", names,
                        "pack = codec.pack_into")),
    ], []


def access_comparisons() -> tuple[list[Comparison], list[Skipped]]:
    """Every plain-access comparison (the memory lives as long as the comparisons)."""
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(MEMORY_START), BULK_REGION_SIZE)])
    memory.write_slice(GuestAddress(MEMORY_START), bytes(range(256)) * (BULK_REGION_SIZE // 256))
    alternatives, skipped = unicorn_comparisons(memory)
    return (typed_comparisons(memory) + bulk_comparisons(memory) + lookup_comparisons()
            + alternatives, skipped)


if __name__ == "__main__":
    sys.exit(run_module("Plain access (issue 2)", access_comparisons, sys.argv[1:]))
