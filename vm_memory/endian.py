"""Explicit-endian integers (`Le16` ... `Be64`), the field types of device structures.

They are ctypes' own byte-swapped scalar types, so they work as `Structure` fields and
read back as `int`. On a little-endian host `Le16` is `c_uint16` itself at run time;
the type checkers see distinct classes (`stubs/`), so portable code cannot treat an
explicit-endian value as a native one, e.g. for an atomic access.
"""

from __future__ import annotations

import ctypes
from typing import Any


def _little(ctype: type[Any]) -> Any:
    return ctype.__ctype_le__


def _big(ctype: type[Any]) -> Any:
    return ctype.__ctype_be__


Le16 = _little(ctypes.c_uint16)
Le32 = _little(ctypes.c_uint32)
Le64 = _little(ctypes.c_uint64)
Be16 = _big(ctypes.c_uint16)
Be32 = _big(ctypes.c_uint32)
Be64 = _big(ctypes.c_uint64)
LeI16 = _little(ctypes.c_int16)
LeI32 = _little(ctypes.c_int32)
LeI64 = _little(ctypes.c_int64)
BeI16 = _big(ctypes.c_int16)
BeI32 = _big(ctypes.c_int32)
BeI64 = _big(ctypes.c_int64)

__all__ = ["Be16", "Be32", "Be64", "BeI16", "BeI32", "BeI64",
           "Le16", "Le32", "Le64", "LeI16", "LeI32", "LeI64"]
