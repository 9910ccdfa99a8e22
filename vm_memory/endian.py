"""Explicit-endian integers (`Le16` ... `Be64`), the field types of device structures.

They are ctypes' own byte-swapped scalar types, so they work as `Structure` fields and
read back as `int`. On a little-endian host `Le16` is `c_uint16` itself at run time;
the type checkers see distinct classes (`stubs/`), so portable code cannot treat an
explicit-endian value as a native one, e.g. for an atomic access.
"""

from __future__ import annotations

import ctypes
from typing import Any


def _named(swapped: Any, native: type[Any], name: str) -> Any:
    """`swapped` under its own name here, where it is not `native` itself: ctypes names
    a byte-swapped type after its native one (`c_uint`), which is no importable name of
    it, so pickle refused it (an `AlignedGuestAddress[Be32]` on a little-endian host)
    and messages called it by the other type's name."""
    if swapped is not native:
        swapped.__name__ = swapped.__qualname__ = name
        swapped.__module__ = __name__
    return swapped


def _little(ctype: type[Any], name: str) -> Any:
    return _named(ctype.__ctype_le__, ctype, name)


def _big(ctype: type[Any], name: str) -> Any:
    return _named(ctype.__ctype_be__, ctype, name)


Le16 = _little(ctypes.c_uint16, "Le16")
Le32 = _little(ctypes.c_uint32, "Le32")
Le64 = _little(ctypes.c_uint64, "Le64")
Be16 = _big(ctypes.c_uint16, "Be16")
Be32 = _big(ctypes.c_uint32, "Be32")
Be64 = _big(ctypes.c_uint64, "Be64")
LeI16 = _little(ctypes.c_int16, "LeI16")
LeI32 = _little(ctypes.c_int32, "LeI32")
LeI64 = _little(ctypes.c_int64, "LeI64")
BeI16 = _big(ctypes.c_int16, "BeI16")
BeI32 = _big(ctypes.c_int32, "BeI32")
BeI64 = _big(ctypes.c_int64, "BeI64")

__all__ = ["Be16", "Be32", "Be64", "BeI16", "BeI32", "BeI64",
           "Le16", "Le32", "Le64", "LeI16", "LeI32", "LeI64"]
