"""Hardware atomics on host memory through the C runtime's libatomic, reached with ctypes.

Each (width, signedness) gets its own typed ctypes function objects, so values cross the
C boundary at the right width and sign. A width is used only if `__atomic_is_lock_free`
says so: libatomic's lock-based fallback would not be atomic against another process
or a guest vCPU. The library is loaded on first use; where it is missing, only atomic
operations fail (`AtomicLibraryMissing`), naming the package to install. On the compiled
path the compiler already knows which widths are lock-free (the same answer as libatomic,
tests/test_compiled_path.py checks): a width it refuses is `AtomicWidthUnsupported`
whether libatomic is there or not, never a missing library that installing would not fix.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from vm_memory.atomic_access import AtomicTypeInfo
from vm_memory.atomic_operations import OPERATIONS, AtomicOperation, Shape
from vm_memory.errors import AtomicLibraryMissing, AtomicWidthUnsupported
from vm_memory.implementation import compiled
from vm_memory.ordering import Ordering

LIBRARY_ENVIRONMENT_VARIABLE: Final = "VM_MEMORY_LIBATOMIC"
"""Names the atomic library to load instead of `libatomic.so.1` (a path or soname)."""
_RELAXED: Final = int(Ordering.RELAXED)


@dataclass(frozen=True, slots=True)
class HostAtomics:
    """The libatomic functions for one width and sign, typed for them."""

    value_type: type[Any]
    mask: int
    """size - 1: a host address `a` is aligned when `a & mask == 0`."""
    functions: dict[str, Callable[..., Any]]
    """By `AtomicOperation.host_function`: load, store, exchange, compare_exchange,
    fetch_add, ... (compare_exchange takes the expected value by reference)."""


_library: ctypes.CDLL | None = None
_lock_free: dict[int, bool] = {}
_by_value_type: dict[type[Any], HostAtomics] = {}
_width_answers: dict[int, bool | None] = {}
"""`refuse_unsupported_width`'s answer per width: lock-free, not, or unknown (None)."""


def _load_library() -> ctypes.CDLL:
    global _library
    if _library is None:
        name = os.environ.get(LIBRARY_ENVIRONMENT_VARIABLE, "libatomic.so.1")
        try:
            _library = ctypes.CDLL(name)
        except OSError as error:
            raise AtomicLibraryMissing(str(error)) from None
    return _library


_COMPILED_LOCK_FREE_WIDTHS: Final[tuple[int, ...] | None] = (
    None if compiled is None else tuple(compiled.lock_free_widths()))
"""The widths the compiled path does lock-free, or None on the pure path."""


def libatomic_lock_free(size: int) -> bool:
    """Whether libatomic accesses of `size` bytes (naturally aligned) are lock-free."""
    if size not in _lock_free:
        library = _load_library()
        try:
            probe = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_size_t, ctypes.c_void_p)(
                ("__atomic_is_lock_free", library))
        except AttributeError as error:  # VM_MEMORY_LIBATOMIC named another library
            raise AtomicLibraryMissing(str(error)) from None
        _lock_free[size] = bool(probe(size, None))
    return _lock_free[size]


def is_lock_free(size: int) -> bool:
    """Whether accesses of `size` bytes (naturally aligned) are lock-free on this host: the
    compiler's answer on the compiled path, else libatomic's (loading it)."""
    if _COMPILED_LOCK_FREE_WIDTHS is not None:
        return size in _COMPILED_LOCK_FREE_WIDTHS
    return libatomic_lock_free(size)


def refuse_unsupported_width(info: AtomicTypeInfo) -> None:
    """Raise `AtomicWidthUnsupported` where this host has no lock-free atomic of `info`'s
    width, whatever backs the address: a width is the type's on this host, so a region
    that needs no hardware instruction (`DeviceRegion`) refuses it as host memory does,
    and the plugin's static refusal holds for every region kind. Where the pure path has
    no libatomic to ask, the answer is unknown here (and remembered as such: the library
    is not looked for again at every call): host memory then raises
    `AtomicLibraryMissing` where it needs the library, and a device region works."""
    try:
        lock_free = _width_answers[info.size]
    except KeyError:
        try:
            lock_free = is_lock_free(info.size)
        except AtomicLibraryMissing:
            lock_free = None
        _width_answers[info.size] = lock_free
    if lock_free is False:
        raise AtomicWidthUnsupported(info.name, info.size)


def host_atomics(info: AtomicTypeInfo) -> HostAtomics:
    """The typed libatomic functions for `info`; raises if the width is not lock-free."""
    try:
        return _by_value_type[info.value_type]
    except KeyError:
        pass
    if not is_lock_free(info.size):
        raise AtomicWidthUnsupported(info.name, info.size)
    library = _load_library()
    value = info.value_type
    size = info.size
    pointer, order = ctypes.c_void_p, ctypes.c_int

    signatures: dict[Shape, tuple[Any, ...]] = {
        "load": (value, pointer, order),
        "store": (None, pointer, value, order),
        "read-modify-write": (value, pointer, value, order),
        "compare-exchange": (ctypes.c_bool, pointer, ctypes.POINTER(value), value, order,
                             order),
    }
    # PYFUNCTYPE: the call keeps the GIL. Dropping and retaking it around a single
    # instruction costs more than the instruction (about 65 ns a call measured), and a
    # plain `struct` read holds it across a page fault the same way.
    try:
        atomics = HostAtomics(value, size - 1, {
            operation.host_function: ctypes.PYFUNCTYPE(*signatures[operation.shape])(
                (f"__atomic_{operation.host_function}_{size}", library))
            for operation in OPERATIONS.values()})
    except AttributeError as error:  # VM_MEMORY_LIBATOMIC named another library
        raise AtomicLibraryMissing(str(error)) from None
    _by_value_type[value] = atomics
    return atomics


def run_host(operation: AtomicOperation, info: AtomicTypeInfo, atomics: HostAtomics, host: int,
             operands: tuple[int, ...], order: int, failure: int) -> Any:
    """Run a checked `operation` with libatomic on the value `info` describes at `host`.

    Integers: one libatomic call. Bools (raw bytes): a load reads any non-zero byte as
    True, a store writes 0 or 1, and a read-modify-write is a compare-exchange loop on
    the byte that computes with `operation.apply`, so a non-canonical byte a guest wrote
    behaves as True and is replaced by 0 or 1.
    """
    functions = atomics.functions
    shape = operation.shape
    if shape == "compare-exchange" and not info.is_bool:
        expected = atomics.value_type(operands[0])
        stored = functions["compare_exchange"](host, ctypes.byref(expected), operands[1],
                                               order, failure)
        return bool(stored), expected.value
    function = functions[operation.host_function]
    if shape == "load":
        return info.decode(function(host, order))
    if shape == "store" or not info.is_bool:
        return function(host, operands[0], order)
    compare_exchange = functions["compare_exchange"]
    raw = functions["load"](host, failure if operation.failure_orderings else _RELAXED)
    while True:
        new, result = operation.apply(raw != 0, operands)
        if new is None:  # a compare that fails: nothing to store
            return result
        expected = atomics.value_type(raw)
        if compare_exchange(host, ctypes.byref(expected), new, order, _RELAXED):
            return result
        raw = expected.value
