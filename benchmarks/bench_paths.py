"""Issue 13's targets, on the compiled and the pure access path side by side.

Each path runs in its own child process (`VM_MEMORY_PURE` set or not), and each figure
is a ratio to a raw baseline measured in that same child on the same memory:

- typed access (`read_obj`, `read_obj_unaligned`, `write_obj` u64) against a bare
  `struct.Struct` `unpack_from`/`pack_into` on the same mmap (compiled target ≤ 1.0);
- atomics (`read_atomic`, `write_atomic`, `fetch_add`, `compare_exchange` u64) against
  the same bare `unpack_from` (compiled target ≤ 1.5), and every atomic operation against
  the bare ctypes libatomic call doing the same thing (pure target ≤ 1.3);
- `read_slice`/`write_slice` of 4 KiB against a raw memoryview slice copy (compiled
  target ≥ 0.8 of its bandwidth);
- alternating between 100 regions against staying in one (≤ 1.3, both paths), and
  against reading the same 100 pages' offsets in one region (the lookup alone, without
  the 100 pages' memory footprint); the compiled reference reading the same host
  addresses in turn against one page gives what the memory system alone charges;
- `AlignedGuestAddress.new` against `GuestAddress(int)` (pure target ≤ 2);
- lookup at 10,000 one-page regions against bare `struct` reads over the same 10,000
  mmaps (≤ 1.5, both paths), and the pure floor: a loop doing nothing but one dict probe
  (page number to buffer and offset) and the read, no check at all;
- the pure floor: a Python method doing nothing but the bare libatomic call, declared as
  the library declares it (PYFUNCTYPE), against the same bare call (reported);
- the compiled floor: ours against a few lines of C doing the same access on the raw
  pointer through one `METH_FASTCALL` call (`benchmarks/c_reference.py`; reported);
- scale: building 100,000 one-page regions with `from_ranges` (one shared mapping, each
  region a window of it), one insert and one remove at that size, and the RSS each
  region costs (absolute targets: ≤ 0.5 s, ≤ 5 ms, ≤ 1 KiB). Ours always runs at
  100,000: the regions share one mapping, so the kernel's mapping limit does not apply.
  The raw counterparts (bare mmaps, a list insert and pop) run beside them; each bare
  mmap is its own kernel mapping, and Linux allows `vm.max_map_count` (65,530 by
  default) per process, so they run at the largest round count it allows, which each
  row's raw label names. The RSS row counts everything a region costs (nothing is
  subtracted: the regions share one mapping object, so there is no per-region mmap
  object to set aside).

Run with `python -m benchmarks.bench_paths [--quick] [--json FILE]`.
"""
# pyright: reportPrivateUsage=false
# (the pure floors read what the library's own fast paths read: an address's fields and
# its type's fast-path entries)

from __future__ import annotations

import argparse
import collections
import ctypes
import gc
import itertools
import json
import mmap
import struct
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from benchmarks.bench_access import (
    LOOKUP_ADDRESSES,
    lookup_addresses,
    lookup_case,
    page_regions,
    raw_touch_case,
)
from benchmarks.bench_atomics import libatomic
from benchmarks.c_reference import build
from benchmarks.common import (
    FULL,
    QUICK,
    Case,
    Comparison,
    Settings,
    Skipped,
    child_document,
    measure,
    path_note,
    run_in_path,
    side_by_side_table,
)
from vm_memory import (
    AlignedGuestAddress,
    GuestAddress,
    GuestMemoryMmap,
    Ordering,
    access_path,
)
from vm_memory.atomic_access import atomic_type_info
from vm_memory.atomic_backend import host_atomics
from vm_memory.atomic_operations import OPERATIONS
from vm_memory.guest_memory import _prime_fast_atomics
from vm_memory.mmap_memory import _collector_paused  # pyright: ignore[reportPrivateUsage]

PAGE = mmap.PAGESIZE
MEMORY_START = 0x10_0000
MEMORY_SIZE = 0x1_0000
OFFSET = 0x80
SEQ_CST = 5
ALTERNATING_REGIONS = 100
SCALE_TARGET_REGIONS = 100_000
SCALE_REGIONS_QUICK = 10_000
MAPPINGS_HEADROOM = 15_000
"""Mappings left for the interpreter, its libraries and the other rows' memory."""


def raw_scale_regions() -> int:
    """The raw counterparts' count: 100,000, or as many as the kernel's mapping limit
    allows (each bare mmap is its own mapping: `vm.max_map_count` is 65,530 by default
    on Linux)."""
    try:
        with open("/proc/sys/vm/max_map_count", encoding="ascii") as limit:
            allowed = int(limit.read()) - MAPPINGS_HEADROOM
    except OSError:
        return SCALE_TARGET_REGIONS
    return max(SCALE_REGIONS_QUICK, min(SCALE_TARGET_REGIONS, allowed // 10_000 * 10_000))

# Targets by path: (compiled, pure); None: reported only.
TYPED = (1.0, None)
ATOMIC_VS_STRUCT = (1.5, None)
ATOMIC_VS_LIBATOMIC = (None, 1.3)
SLICE = (0.8, None)
ALTERNATING = (1.3, 1.3)
ADDRESS = (None, 2.0)
LOOKUP = (1.5, 1.5)


def _target(targets: tuple[float | None, float | None]) -> float | None:
    return targets[0] if access_path().name == "compiled" else targets[1]


def _libatomic_functions(library: ctypes.CDLL, *, keep_gil: bool = False) -> dict[str, Any]:
    """Bare typed 8-byte libatomic functions, as a raw ctypes user would declare them
    (`keep_gil`: PYFUNCTYPE, as the library declares its own)."""
    pointer, order, value = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64
    factory = ctypes.PYFUNCTYPE if keep_gil else ctypes.CFUNCTYPE

    def function(name: str, restype: Any, *argtypes: Any) -> Any:
        return factory(restype, *argtypes)((f"__atomic_{name}_8", library))

    functions = {"load": function("load", value, pointer, order),
                 "store": function("store", None, pointer, value, order),
                 "exchange": function("exchange", value, pointer, value, order),
                 "cas": function("compare_exchange", ctypes.c_bool, pointer,
                                 ctypes.POINTER(value), value, order, order)}
    for name in ("add", "sub", "and", "or", "xor"):
        functions[f"fetch_{name}"] = function(f"fetch_{name}", value, pointer, value, order)
    return functions


def access_comparisons() -> tuple[list[Comparison], list[Skipped]]:
    """Typed, atomic, bulk, address and floor rows on one host-backed region."""
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(MEMORY_START), MEMORY_SIZE)])
    region = memory.regions()[0]
    assert region.host_address is not None
    host = region.host_address + OFFSET
    names: dict[str, Any] = {
        "memory": memory, "ctype": ctypes.c_uint64, "raw_map": region.mapping.mapping,
        "offset": OFFSET, "codec": struct.Struct("<Q"), "host": host, "order": SEQ_CST,
        "aligned": AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(MEMORY_START + OFFSET)),
        "plain": GuestAddress(MEMORY_START + OFFSET), "box": ctypes.c_uint64(0),
        "byref": ctypes.byref, "GuestAddress": GuestAddress, "value": MEMORY_START + OFFSET,
        "new": AlignedGuestAddress.new,
        **_libatomic_functions(libatomic()),
    }
    unpack = Case("Struct('<Q').unpack_from", "unpack(raw_map, offset)", names,
                  "unpack = codec.unpack_from")
    pack = Case("Struct('<Q').pack_into", "pack(raw_map, offset, 0)", names,
                "pack = codec.pack_into")

    def ours(stmt: str, method: str) -> Case:
        return Case("ours", stmt, names, f"op = memory.{method}")

    rows = [
        Comparison("read_obj u64", ours("op(aligned)", "read_obj"), unpack,
                   target=_target(TYPED)),
        Comparison("read_obj_unaligned u64", ours("op(plain, ctype)", "read_obj_unaligned"),
                   unpack, target=_target(TYPED)),
        Comparison("write_obj u64", ours("op(aligned, 0)", "write_obj"), pack,
                   target=_target(TYPED)),
        Comparison("read_atomic u64 vs struct", ours("op(aligned)", "read_atomic"), unpack,
                   target=_target(ATOMIC_VS_STRUCT)),
        Comparison("write_atomic u64 vs struct", ours("op(aligned, 0)", "write_atomic"),
                   unpack, target=_target(ATOMIC_VS_STRUCT)),
        Comparison("fetch_add u64 vs struct", ours("op(aligned, 0)", "fetch_add"), unpack,
                   target=_target(ATOMIC_VS_STRUCT)),
        # The value stays 0, so every compare-exchange succeeds on both sides.
        Comparison("compare_exchange u64 vs struct",
                   ours("op(aligned, 0, 0)", "compare_exchange"), unpack,
                   target=_target(ATOMIC_VS_STRUCT)),
    ]
    libatomic_rows = [
        ("read_atomic", "op(aligned)", "load(host, order)", "__atomic_load_8"),
        ("write_atomic", "op(aligned, 0)", "store(host, 0, order)", "__atomic_store_8"),
        ("swap", "op(aligned, 0)", "exchange(host, 0, order)", "__atomic_exchange_8"),
        ("compare_exchange", "op(aligned, 0, 0)", "cas(host, byref(box), 0, order, order)",
         "__atomic_compare_exchange_8"),
        *((f"fetch_{name}", "op(aligned, 0)", f"fetch_{name}(host, 0, order)",
           f"__atomic_fetch_{name}_8") for name in ("add", "sub", "and", "or", "xor")),
    ]
    for method, stmt, raw, label in libatomic_rows:
        rows.append(Comparison(f"{method} u64 vs libatomic", ours(stmt, method),
                               Case(label, raw, names), target=_target(ATOMIC_VS_LIBATOMIC)))
    rows += pure_floor_comparisons(names, libatomic_rows)
    rows += contract_floor_comparisons(memory, names, libatomic_rows)
    size = 4096
    destination = bytearray(size)
    bulk: dict[str, Any] = {**names, "raw": memoryview(region.mapping.mapping),
                            "destination": destination, "source": bytes(range(256)) * 16,
                            "destination_view": memoryview(destination), "size": size,
                            "start": GuestAddress(MEMORY_START)}
    rows += [
        Comparison("read_slice 4 KiB", Case("ours", "op(start, destination)", bulk,
                                            "op = memory.read_slice"),
                   Case("memoryview slice copy", "destination_view[:] = raw[0:size]", bulk),
                   kind="bandwidth", target=_target(SLICE), bytes_per_op=size),
        Comparison("write_slice 4 KiB", Case("ours", "op(start, source)", bulk,
                                             "op = memory.write_slice"),
                   Case("memoryview slice copy", "raw[0:size] = source", bulk),
                   kind="bandwidth", target=_target(SLICE), bytes_per_op=size),
        Comparison("AlignedGuestAddress.new u64",
                   Case("ours", "new(ctype, plain)", names),
                   Case("GuestAddress(int)", "GuestAddress(value)", names),
                   target=_target(ADDRESS)),
    ]
    floor, skipped = floor_comparisons(memory, names, bulk)
    return rows + floor, skipped


def pure_floor_comparisons(names: dict[str, Any],
                           libatomic_rows: list[tuple[str, str, str, str]]) -> list[Comparison]:
    """The pure path's floor for each atomic row: a Python method that does nothing but
    the libatomic call, declared as the library declares it (PYFUNCTYPE: the GIL kept),
    against the same bare call. What any pure method can reach (reported, no target)."""
    floor_names = {**names, **_libatomic_functions(libatomic(), keep_gil=True)}
    holder = type("Floor", (), {"__slots__": ()})()
    rows: list[Comparison] = []
    for method, stmt, raw, label in libatomic_rows:
        source = f"def {method}(self, address, *operands):\n    return {raw}"
        namespace: dict[str, Any] = {}
        exec(source, floor_names, namespace)  # the method's body: the bare call alone
        bound = types.MethodType(namespace[method], holder)
        floor = Case("a method doing only the call", stmt, {**names, "floor_op": bound},
                     "op = floor_op")
        rows.append(Comparison(f"floor: pure {method} u64 vs libatomic", floor,
                               Case(label, raw, names)))
    return rows


CONTRACT_CHECKS: dict[str, tuple[str, str]] = {
    # shape: (the checks and the call, the operands after the address)
    "load": ("""
    function = address._info.atomics[index]
    value = address._guest_value
    region = self.last
    if region.start_value <= value < region.atomic_read_limit and order is SEQ_CST:
        return function(value + region.atomic_delta, order)
    raise ValueError(value)""", ""),
    "store": ("""
    function, low, high = address._info.atomics[index]
    value = address._guest_value
    region = self.last
    if region.start_value <= value < region.atomic_untracked_limit \\
            and type(operand) is int and low <= operand <= high and order is SEQ_CST:
        return function(value + region.atomic_delta, operand, order)
    raise ValueError(value)""", "operand, "),
    "compare-exchange": ("""
    function, value_type, low, high = address._info.atomics[index]
    value = address._guest_value
    region = self.last
    if region.start_value <= value < region.atomic_untracked_limit \\
            and type(expected) is int and type(desired) is int \\
            and low <= expected <= high and low <= desired <= high \\
            and order is SEQ_CST and failure is SEQ_CST:
        box = value_type(expected)
        if function(value + region.atomic_delta, box, desired, order, failure):
            return True, expected
        return False, box.value
    raise ValueError(value)""", "expected, desired, "),
}
"""The least the atomic contract checks around the libatomic call, per operation shape:
the address an `AlignedGuestAddress` (its type, not a look-alike's); its type's entry
(a lock-free integer type of this width: the function, the operands' range); the address
in bounds of a host-backed region whose host address is aligned like the guest's, and
for a store a writable one tracking no dirty pages (one limit of the region the last
access hit: no lookup); each operand an exact int in range; the ordering allowed (here
the default SEQ_CST, by identity). Nothing else: no look-up on a miss, no general path."""

CONTRACT_ROWS = ("read_atomic", "write_atomic", "fetch_add", "compare_exchange")


class _FloorRegion:
    """A region's limits as the contract floor reads them (8-byte accesses, writable,
    host-backed, no dirty tracking: both limits alike)."""

    __slots__ = ("atomic_delta", "atomic_read_limit", "atomic_untracked_limit",
                 "start_value")

    def __init__(self, start: int, end: int, delta: int) -> None:
        assert delta % 8 == 0
        self.start_value = start
        self.atomic_read_limit = self.atomic_untracked_limit = end - 7
        self.atomic_delta = delta


class _ContractFloor:
    """What the contract floor's methods are bound to: the region the last access hit."""

    __slots__ = ("last",)
    last: _FloorRegion


def contract_floor_comparisons(memory: GuestMemoryMmap, names: dict[str, Any],
                               libatomic_rows: list[tuple[str, str, str, str]]
                               ) -> list[Comparison]:
    """The pure path's floor under the contract: a Python method making only the checks
    the contract requires (`CONTRACT_CHECKS`) around the libatomic call, on the region
    the address is in, against the same bare call (reported). Ours can reach it, not go
    below it without dropping a check."""
    aligned = names["aligned"]
    memory.read_atomic(aligned)  # on the pure path: the type's fast-path entries
    if aligned._info.atomics is None:  # the compiled path keeps its own: make them
        info = atomic_type_info(ctypes.c_uint64)
        atomics = host_atomics(info)
        _prime_fast_atomics(aligned._info, info.minimum, info.maximum, atomics.value_type,
                            atomics.functions)
    region = memory.regions()[0]
    assert region.host_address is not None
    holder = _ContractFloor()
    holder.last = _FloorRegion(region.start_value, region.end_value,
                               region.host_address - region.start_value)
    indexes = {name: index for index, name in enumerate(OPERATIONS)}
    rows: list[Comparison] = []
    for method, stmt, raw, label in libatomic_rows:
        if method not in CONTRACT_ROWS:
            continue
        operation = OPERATIONS[method]
        shape = operation.shape if operation.shape != "read-modify-write" else "store"
        checks, operands = CONTRACT_CHECKS[shape]
        failure = ", failure=SEQ_CST" if shape == "compare-exchange" else ""
        source = (f"def {method}(self, address, {operands}order=SEQ_CST{failure}):\n"
                  "    if type(address) is not Aligned:\n"
                  "        raise TypeError(address)" + checks + "\n")
        namespace: dict[str, Any] = {}
        exec(source, {"Aligned": AlignedGuestAddress, "SEQ_CST": Ordering.SEQ_CST,
                      "index": indexes[method]}, namespace)
        bound = types.MethodType(namespace[method], holder)
        floor = Case("the contract's checks and the call", stmt,
                     {**names, "floor_op": bound}, "op = floor_op")
        rows.append(Comparison(f"floor: pure {method} u64, the contract's checks, "
                               "vs libatomic", floor, Case(label, raw, names)))
    return rows


def floor_comparisons(memory: GuestMemoryMmap, names: dict[str, Any], bulk: dict[str, Any]
                      ) -> tuple[list[Comparison], list[Skipped]]:
    """Ours against the compiled reference on the raw pointer (reported, no target)."""
    reference, why = build()
    if reference is None:
        return [], [Skipped("floor: the compiled C reference", why)]
    floor = {**names, **bulk, "c": reference}
    rows = [
        ("read_obj u64", "op(aligned)", "read_obj", "c.read_u64(host)"),
        ("write_obj u64", "op(aligned, 0)", "write_obj", "c.write_u64(host, 0)"),
        ("read_atomic u64", "op(aligned)", "read_atomic", "c.load_u64(host)"),
        ("write_atomic u64", "op(aligned, 0)", "write_atomic", "c.store_u64(host, 0)"),
        ("fetch_add u64", "op(aligned, 0)", "fetch_add", "c.fetch_add_u64(host, 0)"),
        ("compare_exchange u64", "op(aligned, 0, 0)", "compare_exchange",
         "c.cas_u64(host, 0, 0)"),
        ("read_slice 4 KiB", "op(start, destination)", "read_slice",
         "c.copy_out(host, destination)"),
    ]
    return [Comparison(f"floor: {operation}", Case("ours", stmt, floor, f"op = memory.{method}"),
                       Case("C reference (raw pointer, one call)", raw, floor))
            for operation, stmt, method, raw in rows], []


def region_comparisons() -> list[Comparison]:
    """Alternating between 100 regions against staying in one; lookup at 10,000."""
    many = GuestMemoryMmap.from_ranges(
        [(GuestAddress(MEMORY_START + 2 * PAGE * index), PAGE)
         for index in range(ALTERNATING_REGIONS)])
    alternating = [AlignedGuestAddress.new(ctypes.c_uint64,
                                           GuestAddress(MEMORY_START + 2 * PAGE * index + 64))
                   for index in range(ALTERNATING_REGIONS)]
    staying = [AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(MEMORY_START + 8 * index))
               for index in range(ALTERNATING_REGIONS)]
    # The alternating loop reads 100 pages, the staying one a single cache line's
    # neighbourhood: the same offsets in one region of the same span isolate the lookup.
    one = GuestMemoryMmap.from_ranges(
        [(GuestAddress(MEMORY_START), 2 * PAGE * ALTERNATING_REGIONS)])
    spread = [AlignedGuestAddress.new(ctypes.c_uint64,
                                      GuestAddress(MEMORY_START + 2 * PAGE * index + 64))
              for index in range(ALTERNATING_REGIONS)]
    for address in spread:
        one.write_obj(address, 0)  # fault the pages in, as the regions' are below
    for address in alternating:
        many.write_obj(address, 0)
    rows: list[Comparison] = []
    for method in ("read_atomic", "read_obj"):
        def case(label: str, addresses: list[AlignedGuestAddress[Any]],
                 method: str = method) -> Case:
            memory = one if addresses is spread else many
            return Case(label, "for address in addresses:\n    op(address)",
                        {"memory": memory, "addresses": addresses}, f"op = memory.{method}",
                        ops_per_stmt=len(addresses),
                        overhead_stmt="for address in addresses:\n    pass")
        rows.append(Comparison(f"{method} u64 alternating between 100 regions",
                               case("100 regions in turn", alternating),
                               case("one region", staying), target=_target(ALTERNATING)))
        rows.append(Comparison(f"{method} u64 alternating, vs the same pages in one region",
                               case("100 regions in turn", alternating),
                               case("one region, same pages", spread),
                               target=_target(ALTERNATING)))
    rows += alternating_floor(many, alternating, staying)
    rows += page_probe_floor(many, alternating, staying)
    count = 10_000
    addresses = lookup_addresses(count)
    regions = page_regions(count)
    rows.append(Comparison("lookup at 10,000 regions vs the same 10,000 mmaps",
                           lookup_case(regions, addresses, "read_obj_unaligned u32"),
                           raw_touch_case(regions, addresses, "Struct('<I').unpack_from"),
                           target=_target(LOOKUP)))
    rows.append(Comparison("floor: pure lookup at 10,000 regions, a dict probe per read",
                           dict_lookup_case(regions, addresses),
                           raw_touch_case(regions, addresses, "Struct('<I').unpack_from")))
    assert len(addresses) == LOOKUP_ADDRESSES
    return rows


def dict_lookup_case(memory: GuestMemoryMmap, addresses: list[int]) -> Case:
    """What any Python-level lookup costs at least: one dict probe from the page number
    to the region's buffer and offset, then the read; no check at all."""
    pages: dict[int, tuple[memoryview, int]] = {}
    for region in memory.regions():
        assert region.buffer is not None
        page = region.start_value >> 12
        pages[page] = (region.buffer, (page << 12) - region.start_value)
    return Case("a dict probe and unpack_from",
                "for value in values:\n    entry = get(value >> 12)\n"
                "    unpack(entry[0], (value & 4095) + entry[1])",
                {"values": addresses, "pages": pages, "codec": struct.Struct("<I")},
                "get = pages.get; unpack = codec.unpack_from", ops_per_stmt=len(addresses),
                overhead_stmt="for value in values:\n    pass")


def alternating_floor(memory: GuestMemoryMmap, alternating: list[AlignedGuestAddress[Any]],
                      staying: list[AlignedGuestAddress[Any]]) -> list[Comparison]:
    """What the memory system alone charges for alternating: the compiled reference
    reading the same host addresses, 100 pages in turn against one (reported)."""
    reference, _ = build()
    if reference is None:  # floor_comparisons reports the reason
        return []

    def hosts(addresses: list[AlignedGuestAddress[Any]]) -> list[int]:
        return [memory.get_host_address(GuestAddress(address.raw_value()))
                for address in addresses]

    def case(label: str, addresses: list[AlignedGuestAddress[Any]]) -> Case:
        return Case(label, "for host in hosts:\n    read(host)",
                    {"hosts": hosts(addresses), "c": reference}, "read = c.read_u64",
                    ops_per_stmt=len(addresses), overhead_stmt="for host in hosts:\n    pass")

    return [Comparison("floor: C reference read u64 alternating between 100 regions' pages",
                       case("100 pages in turn", alternating), case("one page", staying))]


class _PageProbeFloor:
    """The least any checked pure lookup does per access: the bounds of the region the
    last access hit (two comparisons); on a switch, one dict probe (page number to a
    region covering the whole page) and one comparison with its limit, and the region
    remembered; then the read. No check of the address's type, the value or the ordering,
    no general path (an address it cannot serve raises KeyError or ValueError). The
    lookup is written out in each method on purpose, as ours is: a shared helper would
    add a Python call to what is measured."""

    __slots__ = ("last", "pages")

    def __init__(self, memory: GuestMemoryMmap) -> None:
        load = _libatomic_functions(libatomic(), keep_gil=True)["load"]
        self.pages = {region.start_value >> 12: _PageEntry(region, load)
                      for region in memory.regions()}
        self.last = next(iter(self.pages.values()))

    def read_atomic(self, address: AlignedGuestAddress[Any]) -> int:
        value = address._guest_value
        entry = self.last
        if not entry.start <= value < entry.limit:
            entry = self.pages[value >> 12]
            if not value < entry.limit:
                raise ValueError(value)
            self.last = entry
        return int(entry.load(value + entry.delta, SEQ_CST))

    def read_obj(self, address: AlignedGuestAddress[Any]) -> int:
        value = address._guest_value
        entry = self.last
        if not entry.start <= value < entry.limit:
            entry = self.pages[value >> 12]
            if not value < entry.limit:
                raise ValueError(value)
            self.last = entry
        return int(entry.view[(value - entry.start) >> 3])


class _PageEntry:
    """One one-page region as the floor reads it: start, limit, host delta, u64 view."""

    __slots__ = ("delta", "limit", "load", "start", "view")

    def __init__(self, region: Any, load: Any) -> None:
        assert region.host_address is not None and region.buffer is not None
        self.start = region.start_value
        self.limit = region.end_value - 7
        self.delta = region.host_address - region.start_value
        self.view = region.buffer.cast("Q")
        self.load = load


def page_probe_floor(memory: GuestMemoryMmap, alternating: list[AlignedGuestAddress[Any]],
                     staying: list[AlignedGuestAddress[Any]]) -> list[Comparison]:
    """What alternating costs any checked pure lookup at least (`_PageProbeFloor`): the
    same loop alternating between the 100 regions against staying in one (reported)."""
    floor = _PageProbeFloor(memory)
    rows: list[Comparison] = []
    for method in ("read_atomic", "read_obj"):
        def case(label: str, addresses: list[AlignedGuestAddress[Any]],
                 method: str = method) -> Case:
            return Case(label, "for address in addresses:\n    op(address)",
                        {"floor": floor, "addresses": addresses}, f"op = floor.{method}",
                        ops_per_stmt=len(addresses),
                        overhead_stmt="for address in addresses:\n    pass")
        rows.append(Comparison(f"floor: pure {method} u64 alternating, a dict probe per "
                               "switch", case("100 regions in turn", alternating),
                               case("one region", staying)))
    return rows


@dataclass(frozen=True)
class ScaleRow:
    """An absolute figure at scale, beside its raw counterpart measured in the same run."""

    operation: str
    ours: float
    raw_label: str
    raw: float
    unit: str
    target: float

    def as_json(self) -> dict[str, Any]:
        return {"operation": self.operation, "ours": self.ours, "raw_label": self.raw_label,
                "raw": self.raw, "unit": self.unit, "target": self.target,
                "within_target": self.ours <= self.target}


WINDOW_FIELDS = 10
"""The fields a bulk build sets on each window (`_cut_windows_pure` in mmap_region.py)."""
REGION_FIELDS = 16
"""The fields a bulk build sets on each region (`_place_fresh_pure`)."""


class _BuildFloorWindow:
    __slots__ = ("__weakref__", *(f"field{index}" for index in range(WINDOW_FIELDS)))


class _BuildFloorRegion:
    __slots__ = ("__weakref__", *(f"field{index}" for index in range(REGION_FIELDS)))


def build_floor(count: int) -> float:
    """Seconds to make `count` windows and `count` regions of plain slotted classes with
    as many fields as the build sets, each field set for all of them by one C-level loop
    over its slot setter (the cheapest way Python has; the values all None, computed by
    nothing), and one dict entry each — with automatic collection paused as the build
    pauses it, and the collection due as the pause ends counted, as the build's is.
    Less than any pure-Python build of this shape can cost."""
    consume = collections.deque[None](maxlen=0).extend
    gc.collect()
    started = time.perf_counter()
    with _collector_paused():
        windows = list(map(object.__new__, itertools.repeat(_BuildFloorWindow, count)))
        for name in _BuildFloorWindow.__slots__[1:]:
            consume(map(getattr(_BuildFloorWindow, name).__set__, windows,
                        itertools.repeat(None)))
        regions = list(map(object.__new__, itertools.repeat(_BuildFloorRegion, count)))
        for name in _BuildFloorRegion.__slots__[1:]:
            consume(map(getattr(_BuildFloorRegion, name).__set__, regions,
                        itertools.repeat(None)))
        table = dict(zip(range(count), regions, strict=True))
    due: list[list[None]] = [[]]  # the first allocation after the pause: the collection due
    elapsed = time.perf_counter() - started
    del windows, regions, table, due
    return elapsed


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * PAGE


def scale_rows(count: int, raw_count: int) -> list[ScaleRow]:
    """Build, insert into and remove from `count` one-page regions; RSS per region; the
    raw counterparts at `raw_count` (what the kernel's mapping limit allows)."""
    ranges = [(GuestAddress(MEMORY_START + 2 * PAGE * index), PAGE) for index in range(count)]
    gc.collect()
    before = _rss_bytes()
    started = time.perf_counter()
    raw_maps = [mmap.mmap(-1, PAGE) for _ in range(raw_count)]
    raw_build = time.perf_counter() - started
    raw_rss = _rss_bytes() - before
    del raw_maps
    gc.collect()
    before = _rss_bytes()
    started = time.perf_counter()
    # Many small regions: windows of one mapping (a mapping each would hit
    # vm.max_map_count long before 100,000).
    memory = GuestMemoryMmap.from_ranges(ranges, one_mapping=True)
    build_time = time.perf_counter() - started
    ours_rss = _rss_bytes() - before
    floor_time = build_floor(count)
    extra = GuestMemoryMmap.from_ranges([(GuestAddress(MEMORY_START + PAGE), PAGE)])
    region = extra.regions()[0]
    inserts: list[float] = []
    removes: list[float] = []
    for _ in range(5):
        # Both rows keep the new memory object, as hot-plug does: freeing a memory object
        # (its regions tuple lets go of every region) is timed by neither.
        started = time.perf_counter()
        bigger = memory.insert_region(region)
        inserts.append(time.perf_counter() - started)
        started = time.perf_counter()
        smaller = bigger.remove_region(GuestAddress(MEMORY_START + PAGE), PAGE)
        removes.append(time.perf_counter() - started)
        del bigger, smaller
    copies: list[list[Any]] = [list(memory.regions())[:raw_count] for _ in range(10)]
    insert_raw = min(_timed(partial(copy.insert, 1, region)) for copy in copies[:5])
    remove_raw = min(_timed(partial(copy.pop, 1)) for copy in copies[5:])
    label, raw_label = f"{count:,}", f"{raw_count:,}"
    return [
        # The target is 0.5 s for 100,000 regions: scaled to the count measured (quick).
        ScaleRow(f"build {label} one-page regions (one_mapping=True)", build_time,
                 f"{raw_label} bare mmap.mmap(-1, PAGE) (the mapping limit's count)",
                 raw_build, "s", 0.5 * count / SCALE_TARGET_REGIONS),
        ScaleRow(f"floor: build {label} pairs of slotted objects ({WINDOW_FIELDS} + "
                 f"{REGION_FIELDS} fields, each set by a C loop over its slot setter) and "
                 "a dict entry each", floor_time,
                 f"the build of {label} above (same run)", build_time, "s",
                 0.5 * count / SCALE_TARGET_REGIONS),
        ScaleRow(f"insert one region into {label}", min(inserts),
                 f"list.insert into {raw_label}", insert_raw, "s", 0.005),
        ScaleRow(f"remove one region from {label} + 1", min(removes),
                 f"list.pop from {raw_label}", remove_raw, "s", 0.005),
        ScaleRow(f"RSS per region (all of it, at {label})", ours_rss / count,
                 f"RSS per bare mmap object (at {raw_label})", raw_rss / raw_count, "B",
                 1024.0),
    ]


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def child(settings: Settings) -> dict[str, Any]:
    """Every row measured on the path this process runs."""
    comparisons, skipped = access_comparisons()
    rows = measure(comparisons + region_comparisons(), settings)
    scale = (scale_rows(SCALE_REGIONS_QUICK, SCALE_REGIONS_QUICK) if settings.quick
             else scale_rows(SCALE_TARGET_REGIONS, raw_scale_regions()))
    return child_document(rows, skipped) | {"scale": [row.as_json() for row in scale]}


def scale_table(compiled: dict[str, Any], pure: dict[str, Any]) -> str:
    """The scale rows of both paths as one Markdown table."""
    lines = ["| at scale | raw counterpart | compiled | pure | raw (compiled run) | "
             "target | within target (compiled, pure) |", "|---|---|---:|---:|---:|---|---|"]
    for ours_row, pure_row in zip(compiled["scale"], pure["scale"], strict=True):
        def show(value: float, unit: str) -> str:
            return f"{value * 1000:.2f} ms" if unit == "s" else f"{value:,.0f} B"
        unit = ours_row["unit"]
        lines.append(
            f"| {ours_row['operation']} | {ours_row['raw_label']} | "
            f"{show(ours_row['ours'], unit)} | {show(pure_row['ours'], unit)} | "
            f"{show(ours_row['raw'], unit)} | ≤ {show(ours_row['target'], unit)} | "
            f"{'yes' if ours_row['within_target'] else 'no'}, "
            f"{'yes' if pure_row['within_target'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_paths",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write both paths' results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    settings = QUICK if arguments.quick else FULL
    if arguments.child:
        print(json.dumps(child(settings)))
        return 0
    compiled = run_in_path("benchmarks.bench_paths", False, arguments.quick)
    pure = run_in_path("benchmarks.bench_paths", True, arguments.quick)
    print(path_note(compiled), end="")
    print(f"## Issue 13: the compiled and the pure path\n\n"
          f"Best of {settings.repeats} interleaved samples per row, each path in its own "
          "process, every ratio to the baseline measured in that process.\n")
    print(side_by_side_table(compiled, pure))
    print()
    print(scale_table(compiled, pure))
    if arguments.json:
        with open(arguments.json, "w", encoding="utf-8") as stream:
            json.dump({"compiled": compiled, "pure": pure}, stream, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
