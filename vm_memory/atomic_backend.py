"""Hardware atomics on host memory through the C runtime's libatomic, reached with ctypes.

Each (width, signedness) gets its own typed ctypes function objects, so values cross the
C boundary at the right width and sign. A width is used only if `__atomic_is_lock_free`
says so: libatomic's lock-based fallback would not be atomic against another process
or a guest vCPU. The library is loaded on first use; where it is missing, only atomic
operations fail (`AtomicLibraryMissing`), naming the package to install.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from vm_memory.atomic_access import AtomicKind
from vm_memory.errors import AtomicLibraryMissing, AtomicWidthUnsupported

LIBRARY_ENVIRONMENT_VARIABLE: Final = "VM_MEMORY_LIBATOMIC"
"""Names the atomic library to load instead of `libatomic.so.1` (a path or soname)."""

FETCH_OPERATIONS: Final = ("add", "sub", "and", "or", "xor")


@dataclass(frozen=True, slots=True)
class HostAtomics:
    """The libatomic functions for one AtomicKind, typed for its width and sign."""

    kind: AtomicKind
    size: int
    mask: int
    """size - 1: a host address `a` is aligned when `a & mask == 0`."""
    load: Callable[[int, int], Any]
    store: Callable[[int, Any, int], None]
    exchange: Callable[[int, Any, int], Any]
    compare_exchange: Callable[[int, Any, Any, int, int], bool]
    """(address, byref(expected), desired, success, failure) -> succeeded."""
    fetch: dict[str, Callable[[int, Any, int], Any]]
    fetch_add: Callable[[int, Any, int], Any] | None
    """The same as fetch["add"], one lookup less on the hottest read-modify-write; None
    for c_bool, which has no add."""


_library: ctypes.CDLL | None = None
_lock_free: dict[int, bool] = {}
_by_value_type: dict[type[Any], HostAtomics] = {}


def _load_library() -> ctypes.CDLL:
    global _library
    if _library is None:
        name = os.environ.get(LIBRARY_ENVIRONMENT_VARIABLE, "libatomic.so.1")
        try:
            _library = ctypes.CDLL(name)
        except OSError as error:
            raise AtomicLibraryMissing(str(error)) from None
    return _library


def is_lock_free(size: int) -> bool:
    """Whether libatomic accesses of `size` bytes (naturally aligned) are lock-free."""
    if size not in _lock_free:
        probe = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_size_t, ctypes.c_void_p)(
            ("__atomic_is_lock_free", _load_library()))
        _lock_free[size] = bool(probe(size, None))
    return _lock_free[size]


def host_atomics(kind: AtomicKind) -> HostAtomics:
    """The typed libatomic functions for `kind`; raises if the width is not lock-free."""
    try:
        return _by_value_type[kind.value_type]
    except KeyError:
        pass
    library = _load_library()
    if not is_lock_free(kind.size):
        raise AtomicWidthUnsupported(kind.name, kind.size)
    value = kind.value_type
    size = kind.size
    pointer, order = ctypes.c_void_p, ctypes.c_int

    def function(name: str, restype: Any, *argtypes: Any) -> Any:
        # PYFUNCTYPE: the call keeps the GIL. Dropping and retaking it around a single
        # instruction costs more than the instruction (about 65 ns a call measured),
        # and a plain `struct` read holds it across a page fault the same way.
        return ctypes.PYFUNCTYPE(restype, *argtypes)((f"__atomic_{name}_{size}", library))

    fetch = {operation: function(f"fetch_{operation}", value, pointer, value, order)
             for operation in FETCH_OPERATIONS}
    atomics = HostAtomics(
        kind=kind,
        size=size,
        mask=size - 1,
        load=function("load", value, pointer, order),
        store=function("store", None, pointer, value, order),
        exchange=function("exchange", value, pointer, value, order),
        compare_exchange=function("compare_exchange", ctypes.c_bool, pointer,
                                  ctypes.POINTER(value), value, order, order),
        fetch=fetch,
        fetch_add=None if kind.is_bool else fetch["add"],
    )
    _by_value_type[value] = atomics
    return atomics
