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
from operator import index
from typing import Any, TypeVar

from vm_memory.byte_valued import cached_for_type, layout_of, type_name
from vm_memory.errors import (
    InvalidArgumentType,
    NotAtomicAccess,
    NotByteValued,
    ValueOutOfRange,
)

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
class AtomicTypeInfo:
    """What an atomic operation needs to know about its type."""

    ctype: type[Any]
    name: str
    size: int
    is_bool: bool
    signed: bool
    minimum: int
    maximum: int
    value_type: type[Any]
    """The fixed-width ctypes integer carrying the value across the C call (`c_uint8`
    for `c_bool`: the raw byte, which `decode` turns into a bool)."""

    def check_value(self, value: object) -> int:
        """`value` as an int if it fits the type, else a typed error. It is converted once
        with `operator.index` (NumPy integers and int subclasses become plain ints; True
        and False are 1 and 0); floats and other non-integers are refused."""
        if type(value) is not int:
            try:
                value = index(value)  # type: ignore[arg-type]
            except TypeError:
                raise InvalidArgumentType(f"a {self.name} value", "an int", value) from None
        if not self.minimum <= value <= self.maximum:
            raise ValueOutOfRange(self.name, value,
                                  f"not in [{self.minimum}, {self.maximum}]")
        return value

    def decode(self, raw: int) -> Any:
        """The value of the raw integer read from memory: a bool for `c_bool` (any byte
        but 0 is True), else the integer itself."""
        return raw != 0 if self.is_bool else raw

    def wrap(self, number: int) -> int:
        """`number` wrapped to the type's width, as the hardware's arithmetic does."""
        span = self.maximum - self.minimum + 1
        return (number - self.minimum) % span + self.minimum


_TYPE_INFOS: dict[type[Any], AtomicTypeInfo] = {}


def atomic_type_info(ctype: object) -> AtomicTypeInfo:
    """The AtomicTypeInfo of `ctype`, or raise `NotAtomicAccess` saying why it is not one."""
    cached = cached_for_type(_TYPE_INFOS, ctype)
    if cached is not None:
        return cached
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
    value_type = _FIXED_TYPES[(layout.size, signed)]
    info = AtomicTypeInfo(layout.ctype, name, layout.size, layout.is_bool, signed,
                      layout.minimum, layout.maximum, value_type)
    _TYPE_INFOS[layout.ctype] = info
    return info


def is_atomic_access(ctype: object) -> bool:
    """Whether `ctype` is an AtomicAccess type (width support aside)."""
    try:
        atomic_type_info(ctype)
    except NotAtomicAccess:
        return False
    return True
