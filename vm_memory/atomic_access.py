"""AtomicAccess: the scalar types an atomic operation can act on.

At run time a type is AtomicAccess when it is a native-endian integer or `c_bool` of 1,
2, 4 or 8 bytes; whether the host can access that width lock-free is the atomic
backend's question. For the type checkers, `AtomicInteger` is a constrained type
variable over the integer types and `c_bool` is handled on its own, so a float, a
Structure or an explicit-endian type is refused without any plugin.
"""

from __future__ import annotations

import ctypes
from ctypes import (
    c_bool,
    c_byte,
    c_int,
    c_int16,
    c_int32,
    c_int64,
    c_long,
    c_longlong,
    c_short,
    c_size_t,
    c_ssize_t,
    c_ubyte,
    c_uint,
    c_uint16,
    c_uint32,
    c_uint64,
    c_ulong,
    c_ulonglong,
    c_ushort,
)
from dataclasses import dataclass
from typing import Any, TypeVar

from vm_memory.byte_valued import layout_of, type_name
from vm_memory.errors import NotAtomicAccess, NotByteValued, ValueOutOfRange

AtomicInteger = TypeVar(
    "AtomicInteger",
    c_byte, c_ubyte, c_short, c_ushort, c_int, c_uint, c_long, c_ulong, c_longlong,
    c_ulonglong, c_int16, c_uint16, c_int32, c_uint32, c_int64, c_uint64, c_size_t,
    c_ssize_t,
)
"""The integer types an atomic operation accepts (statically)."""

AtomicAccess = (
    c_bool | c_byte | c_ubyte | c_short | c_ushort | c_int | c_uint | c_long | c_ulong
    | c_longlong | c_ulonglong | c_int16 | c_uint16 | c_int32 | c_uint32 | c_int64
    | c_uint64 | c_size_t | c_ssize_t
)
"""Every AtomicAccess type, for annotations such as `type[AtomicAccess]`."""

ATOMIC_WIDTHS = (1, 2, 4, 8)
"""Sizes in bytes an atomic access can have (16 is never lock-free through libatomic)."""

_FIXED_TYPES: dict[tuple[int, bool], type[Any]] = {
    (1, True): ctypes.c_int8, (1, False): ctypes.c_uint8,
    (2, True): ctypes.c_int16, (2, False): ctypes.c_uint16,
    (4, True): ctypes.c_int32, (4, False): ctypes.c_uint32,
    (8, True): ctypes.c_int64, (8, False): ctypes.c_uint64,
}


@dataclass(frozen=True, slots=True)
class AtomicKind:
    """What an atomic operation needs to know about its type."""

    ctype: type[Any]
    name: str
    size: int
    is_bool: bool
    signed: bool
    minimum: int
    maximum: int
    value_type: type[Any]
    """The fixed-width ctypes type (or c_bool) carrying the value across the C call."""

    def check_value(self, value: object) -> int:
        """`value` as an int if it fits the type, else raise `ValueOutOfRange`."""
        if self.is_bool:
            if value is True or value is False or value in {0, 1}:
                return int(value)  # pyright: ignore[reportArgumentType]
            raise ValueOutOfRange(self.name, value, "a bool is True, False, 0 or 1")
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{self.name} takes an int, not {type(value).__name__}")
        if not self.minimum <= value <= self.maximum:
            raise ValueOutOfRange(self.name, value,
                                  f"not in [{self.minimum}, {self.maximum}]")
        return value


_KINDS: dict[type[Any], AtomicKind] = {}


def atomic_kind(ctype: object) -> AtomicKind:
    """The AtomicKind of `ctype`, or raise `NotAtomicAccess` saying why it is not one."""
    try:
        return _KINDS[ctype]  # type: ignore[index]
    except (KeyError, TypeError):
        pass
    try:
        layout = layout_of(ctype)
    except NotByteValued as error:
        raise NotAtomicAccess(error.type_name, error.reason) from None
    name = type_name(ctype)
    if not layout.is_scalar or not (layout.is_integer or layout.is_bool):
        raise NotAtomicAccess(name, "only integer and bool scalars are AtomicAccess")
    if not layout.is_native_byte_order:
        raise NotAtomicAccess(name, "an explicit foreign-endian value needs a byte swap, "
                                    "so no single hardware access can read it")
    if layout.size not in ATOMIC_WIDTHS:
        raise NotAtomicAccess(name, f"{layout.size}-byte accesses are never atomic here")
    signed = layout.minimum < 0
    value_type = c_bool if layout.is_bool else _FIXED_TYPES[(layout.size, signed)]
    kind = AtomicKind(layout.ctype, name, layout.size, layout.is_bool, signed,
                      layout.minimum, layout.maximum, value_type)
    _KINDS[layout.ctype] = kind
    return kind


def is_atomic_access(ctype: object) -> bool:
    """Whether `ctype` is an AtomicAccess type (width support aside)."""
    try:
        atomic_kind(ctype)
    except NotAtomicAccess:
        return False
    return True
