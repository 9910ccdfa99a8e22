"""Atomic and aligned access against bare libatomic / `struct` calls on the same address.

Rows: `read_atomic`, `write_atomic`, `fetch_add` of u32/u64 against a bare ctypes
libatomic call (`CFUNCTYPE`-typed `__atomic_load_N` etc.) with the host address
(target ≤ 1.5 times); `swap` and `compare_exchange` likewise (no target, reported);
`read_obj`/`write_obj` of u32/u64 against `struct.Struct.unpack_from`/`pack_into` on
the same mmap (target ≤ 3 times). Every call uses sequentially consistent ordering, the
default of our API; the baseline passes the plain C constant 5 (`__ATOMIC_SEQ_CST`).

Run alone with `python -m benchmarks.bench_atomics [--quick]`.
"""

from __future__ import annotations

import ctypes
import importlib
import struct
import sys
from typing import Any

from benchmarks.common import Case, Comparison, Skipped, run_module
from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap

MEMORY_START = 0x10_0000
MEMORY_SIZE = 0x1_0000
ATOMIC_OFFSET = 0x80
SEQ_CST = 5
ATOMIC_TARGET = 1.5
PLAIN_TARGET = 3.0
SCALARS: tuple[tuple[type[ctypes.c_uint32] | type[ctypes.c_uint64], str, str], ...] = (
    (ctypes.c_uint32, "u32", "<I"), (ctypes.c_uint64, "u64", "<Q"))


def libatomic() -> ctypes.CDLL:
    """The C runtime's atomic library, loaded independently of vm_memory's backend."""
    return ctypes.CDLL("libatomic.so.1")


def raw_functions(library: ctypes.CDLL, ctype: type[Any], size: int) -> dict[str, Any]:
    """Bare typed libatomic functions for one width, as a raw ctypes user would write."""
    pointer, order = ctypes.c_void_p, ctypes.c_int

    def function(name: str, restype: Any, *argtypes: Any) -> Any:
        return ctypes.CFUNCTYPE(restype, *argtypes)((f"__atomic_{name}_{size}", library))

    return {
        "load": function("load", ctype, pointer, order),
        # The calling convention vm_memory uses (the GIL kept over the instruction):
        "load_keeping_gil": ctypes.PYFUNCTYPE(ctype, pointer, order)(
            (f"__atomic_load_{size}", library)),
        "store": function("store", None, pointer, ctype, order),
        "exchange": function("exchange", ctype, pointer, ctype, order),
        "fetch_add": function("fetch_add", ctype, pointer, ctype, order),
        "cas": function("compare_exchange", ctypes.c_bool, pointer, ctypes.POINTER(ctype),
                        ctype, order, order),
    }


ATOMICS_PACKAGE_ROWS = "atomics package load/fetch_add u32 (alternative)"


def atomics_package_comparisons(memory: GuestMemoryMmap, library: ctypes.CDLL
                                ) -> tuple[list[Comparison], list[Skipped]]:
    """The GPL `atomics` package on the same bytes, if installed (never installed here)."""
    try:
        atomics: Any = importlib.import_module("atomics")
    except ImportError:
        return [], [Skipped(ATOMICS_PACKAGE_ROWS, "the atomics package is not installed "
                                                  "(optional)")]
    region = memory.regions()[0]
    assert region.host_address is not None
    try:
        window = memoryview(region.mapping.mapping)[ATOMIC_OFFSET:ATOMIC_OFFSET + 4]
        context = atomics.atomicview(buffer=window, atype=atomics.UINT)
        view = context.__enter__()
    except Exception as error:  # any failure of an optional third-party set-up
        return [], [Skipped(ATOMICS_PACKAGE_ROWS, f"atomics set-up failed: {error!r}")]
    names: dict[str, Any] = {"view": view, "context": context,
                             "host": region.host_address + ATOMIC_OFFSET, "order": SEQ_CST,
                             **raw_functions(library, ctypes.c_uint32, 4)}
    return [
        Comparison("atomics package load u32 (alternative)",
                   Case("atomics", "view_load()", names, "view_load = view.load"),
                   Case("__atomic_load_4", "load(host, order)", names)),
        Comparison("atomics package fetch_add u32 (alternative)",
                   Case("atomics", "view_fetch_add(1)", names,
                        "view_fetch_add = view.fetch_add"),
                   Case("__atomic_fetch_add_4", "fetch_add(host, 1, order)", names)),
    ], []


def atomic_comparisons() -> tuple[list[Comparison], list[Skipped]]:
    """Every atomic and aligned-access comparison on one host-backed region."""
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(MEMORY_START), MEMORY_SIZE)])
    region = memory.regions()[0]
    assert region.host_address is not None
    host = region.host_address + ATOMIC_OFFSET
    library = libatomic()
    comparisons: list[Comparison] = []
    for ctype, short, fmt in SCALARS:
        size = ctypes.sizeof(ctype)
        names: dict[str, Any] = {
            "memory": memory, "address": AlignedGuestAddress.new(
                ctype, GuestAddress(MEMORY_START + ATOMIC_OFFSET)),
            "host": host, "order": SEQ_CST, "box": ctype(0), "byref": ctypes.byref,
            "raw_map": region.mapping.mapping, "offset": ATOMIC_OFFSET,
            "codec": struct.Struct(fmt), **raw_functions(library, ctype, size),
        }

        def atomic(operation: str, ours: str, method: str, raw: str, target: float | None,
                   raw_label: str, raw_setup: str = "pass",
                   names: dict[str, Any] = names, short: str = short) -> Comparison:
            return Comparison(f"{operation} {short}",
                              Case("ours", ours, names, f"op = memory.{method}"),
                              Case(raw_label, raw, names, raw_setup), target=target)

        comparisons += [
            atomic("read_atomic", "op(address)", "read_atomic", "load(host, order)",
                   ATOMIC_TARGET, f"__atomic_load_{size}"),
            atomic("read_atomic, same calling convention", "op(address)", "read_atomic",
                   "load_keeping_gil(host, order)", None,
                   f"PYFUNCTYPE __atomic_load_{size}"),
            atomic("write_atomic", "op(address, 1)", "write_atomic",
                   "store(host, 1, order)", ATOMIC_TARGET, f"__atomic_store_{size}"),
            atomic("fetch_add", "op(address, 1)", "fetch_add", "fetch_add(host, 1, order)",
                   ATOMIC_TARGET, f"__atomic_fetch_add_{size}"),
            atomic("swap", "op(address, 0)", "swap", "exchange(host, 0, order)", None,
                   f"__atomic_exchange_{size}"),
            # The value stays 0, so every compare-exchange succeeds on both sides.
            atomic("compare_exchange", "op(address, 0, 0)", "compare_exchange",
                   "cas(host, byref(box), 0, order, order)", None,
                   f"__atomic_compare_exchange_{size}"),
            atomic("read_obj", "op(address)", "read_obj", "unpack(raw_map, offset)",
                   PLAIN_TARGET, f"Struct('{fmt}').unpack_from", "unpack = codec.unpack_from"),
            atomic("write_obj", "op(address, 1)", "write_obj",
                   "pack(raw_map, offset, 1)", PLAIN_TARGET,
                   f"Struct('{fmt}').pack_into", "pack = codec.pack_into"),
        ]
    alternatives, skipped = atomics_package_comparisons(memory, library)
    return comparisons + alternatives, skipped


if __name__ == "__main__":
    sys.exit(run_module("Atomic and aligned access (issue 3)", atomic_comparisons, sys.argv[1:]))
