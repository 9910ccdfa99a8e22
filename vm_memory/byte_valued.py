"""ByteValued: the types that can be copied to and from guest memory as plain bytes.

A ByteValued type is a ctypes scalar (fixed-width or platform-sized, in native or an
explicit byte order), or a ctypes `Structure`, `Union` or `Array` made only of
ByteValued fields. Pointers, `c_char_p`, `c_wchar_p`, `c_void_p`, `py_object` and
function pointers are not: their bytes mean nothing in another address space.

Each type is validated once; its `TypeLayout` (size, alignment, codec) is cached.
Scalars read back as Python `int`, `float`, `bool`, `bytes` (`c_char`) or `str`
(`c_wchar`); aggregates as independent ctypes instances (copies).
"""

from __future__ import annotations

import ctypes
import operator
import platform
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from vm_memory.errors import (
    InvalidArgumentType,
    InvalidGuestValue,
    NotByteValued,
    ValueOutOfRange,
)

_V_co = TypeVar("_V_co", covariant=True)


class ScalarValue(Protocol[_V_co]):
    """Static shape of a ctypes scalar instance whose value is a `_V_co`."""

    @property
    def value(self) -> _V_co: ...


Aggregate = ctypes.Structure | ctypes.Union | ctypes.Array[Any]
"""The ctypes aggregate instance types (their ByteValued-ness is checked at run time)."""

# ctypes `_type_` codes of scalars that are plain data, with their Python value kind.
_INTEGER_CODES: Final = frozenset("bBhHiIlLqQ")
_SIGNED_CODES: Final = frozenset("bhilq")
_FLOAT_CODES: Final = frozenset("fd")
_REFUSED_CODES: Final = {
    "P": "a pointer (c_void_p) is an address in this process, meaningless in the guest",
    "z": "c_char_p is a pointer to a Python-owned string",
    "Z": "c_wchar_p is a pointer to a Python-owned string",
    "O": "py_object holds a reference to a Python object",
}
_STRUCT_INTEGER_FORMATS: Final = {1: "b", 2: "h", 4: "i", 8: "q"}


@dataclass(frozen=True, slots=True)
class TypeLayout:
    """How one ByteValued type sits in memory and converts to a Python value."""

    ctype: type[Any]
    name: str
    size: int
    alignment: int
    is_scalar: bool
    is_integer: bool
    is_bool: bool
    is_native_byte_order: bool
    minimum: int
    maximum: int
    unpack_from: Callable[[Any, int], Any]
    """(buffer, offset) -> Python value; scalars give int/float/bool, aggregates a copy."""
    pack_into: Callable[[Any, int, Any], None]
    """(buffer, offset, value) -> None; raises ValueOutOfRange or InvalidArgumentType,
    writing nothing."""
    struct_unpack: Callable[[Any, int], tuple[Any, ...]] | None = None
    """For struct-coded scalars: the codec's own `unpack_from`, for the hot read paths."""
    struct_pack: Callable[[Any, int, Any], None] | None = None
    """For integers: the codec's own `pack_into`. Only for an int already checked to be in
    [minimum, maximum]: on an error, struct has already zeroed the destination."""
    native_code: str | None = None
    """For native-endian integers: the `memoryview` format of the same size and sign, so
    a region's typed view reads and writes the value in one C-level subscript (which,
    unlike struct, checks the value before it stores anything)."""
    shift: int = 0
    """log2 of the size: a typed view's index is the byte offset >> shift."""


_LAYOUTS: dict[type[Any], TypeLayout] = {}


def _metaclasses(*ctypes_types: type[Any]) -> tuple[type[Any], ...]:
    """The distinct metaclasses of `ctypes_types`."""
    found: list[type[Any]] = []
    for ctypes_type in ctypes_types:
        metaclass: type[Any] = type(ctypes_type)
        if not any(metaclass is known for known in found):
            found.append(metaclass)
    return tuple(found)


_CTYPES_METACLASSES: Final = _metaclasses(
    ctypes.c_int, ctypes.Structure, ctypes.Union, ctypes.Array, ctypes.BigEndianStructure,
    ctypes.LittleEndianStructure, ctypes.BigEndianUnion, ctypes.LittleEndianUnion)
"""The metaclasses of ctypes' own scalars, Structures, Unions and Arrays (explicit-endian
ones included): compared by identity, as a type's own metaclass could lie to `==`."""


class _PerType(Protocol):
    """An entry of a cache keyed by type: it names its type."""

    @property
    def ctype(self) -> type[Any]: ...


_E = TypeVar("_E", bound=_PerType)


def cached_for_type(cache: dict[type[Any], _E], ctype: object) -> _E | None:
    """`cache`'s entry for this very `ctype`, or None (absent, unhashable, a hash that
    raises). A hit must be this very type, not one whose metaclass makes it equal a
    cached one, so every cache keyed by type looks up through here."""
    try:
        entry = cache[ctype]  # type: ignore[index]
    except Exception:
        return None
    # (pyright's narrowing wrongly finds no overlap between a type and an object)
    return entry if entry.ctype is ctype else None  # pyright: ignore[reportUnnecessaryComparison]


def layout_of(ctype: object) -> TypeLayout:
    """The layout of a ByteValued type, validated and cached; raises `NotByteValued`."""
    layout = cached_for_type(_LAYOUTS, ctype)
    if layout is None:
        layout = _build_layout(ctype)
        _LAYOUTS[layout.ctype] = layout
    return layout


def is_byte_valued(ctype: object) -> bool:
    """Whether `ctype` is a ByteValued type."""
    try:
        layout_of(ctype)
    except NotByteValued:
        return False
    return True


def type_name(ctype: object) -> str:
    """A readable name for a type, for messages."""
    return getattr(ctype, "__qualname__", None) or repr(ctype)


def _byte_order_of(ctype: type[Any]) -> str:
    """'little' or 'big': ctypes marks swapped scalar types only through these links."""
    if getattr(ctype, "__ctype_be__", None) is ctype and ctypes.sizeof(ctype) > 1:
        return "big"
    if getattr(ctype, "__ctype_le__", None) is ctype and ctypes.sizeof(ctype) > 1:
        return "little"
    return sys.byteorder


def _own_fields(ctype: type[Any]) -> list[tuple[Any, ...]]:
    """Every field of a Structure/Union, the inherited ones first (ctypes lays a subclass's
    `_fields_` after its bases'), or raise if the type is incomplete."""
    fields: list[tuple[Any, ...]] = []
    complete = False
    for cls in reversed(ctype.__mro__):
        declared = vars(cls).get("_fields_")
        if declared is not None:
            fields.extend(declared)
            complete = True
    if not complete:
        raise NotByteValued(type_name(ctype), "it has no _fields_ (an incomplete type)")
    return fields


def _check_fields(ctype: type[Any]) -> None:
    """Validate every field of a Structure/Union (inherited ones too), or the element
    type of an Array."""
    if _derives(ctype, ctypes.Array):
        element: object = ctype._type_
        try:
            layout_of(element)
        except NotByteValued as error:
            raise NotByteValued(type_name(ctype), f"its element type is not: {error.reason}")\
                from None
        return
    for field in _own_fields(ctype):
        name, field_type = field[0], field[1]
        try:
            layout_of(field_type)
        except NotByteValued as error:
            raise NotByteValued(
                type_name(ctype), f"field {name!r} ({type_name(field_type)}) is not: "
                f"{error.reason}"
            ) from None


def _build_layout(ctype: object) -> TypeLayout:
    if not isinstance(ctype, type):
        raise NotByteValued(type_name(ctype), "it is not a type")
    return _build_type_layout(ctype)


def _derives(ctype: type[Any], base: Any) -> bool:
    return issubclass(ctype, base)


def _build_type_layout(ctype: type[Any]) -> TypeLayout:
    name = type_name(ctype)
    # Plain bools, not narrowing checks: the helpers below take any ctypes type.
    scalar = _derives(ctype, ctypes._SimpleCData)  # pyright: ignore[reportPrivateUsage]
    aggregate = _derives(ctype, ctypes.Structure | ctypes.Union | ctypes.Array)
    metaclass = type(ctype)
    if (scalar or aggregate) and not any(metaclass is own for own in _CTYPES_METACLASSES):
        # Every cache of layouts and fast paths is keyed by the type, and a metaclass of
        # one's own can make a type compare equal to another (now or patched later).
        raise NotByteValued(name, f"its metaclass {metaclass.__qualname__} is not one of "
                                  "ctypes' own, and could make it pass for another type")
    if scalar:
        return _scalar_layout(ctype, name)
    if issubclass(ctype, ctypes._Pointer):  # pyright: ignore[reportPrivateUsage]
        raise NotByteValued(name, "a pointer is an address in this process")
    if issubclass(ctype, ctypes._CFuncPtr):  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
        raise NotByteValued(name, "a function pointer is an address in this process")
    if aggregate:
        _check_fields(ctype)
        return _aggregate_layout(ctype, name)
    raise NotByteValued(name, "only ctypes scalars, Structures, Unions and Arrays are")


_X87_MACHINES: Final = frozenset({"x86_64", "amd64", "i386", "i486", "i586", "i686", "x86"})
LONG_DOUBLE_VALUE_BYTES: Final = 10 if (
    platform.machine().lower() in _X87_MACHINES and ctypes.sizeof(ctypes.c_longdouble) > 10
) else ctypes.sizeof(ctypes.c_longdouble)
"""The bytes of a long double that hold its value. x87's 80-bit format leaves the rest of
its 12 or 16 as padding, which ctypes' setter copies from its own C stack: host bytes that
must never reach guest memory. Elsewhere (IEEE quad, double-double, a plain double) every
byte counts."""


def _long_double_padding(ctype: type[Any]) -> list[tuple[int, int]]:
    """The byte ranges of `ctype` that are a long double's padding: in a scalar, and in
    arrays and Structures at any depth (not in a Union, whose bytes may be another
    member's)."""
    size = ctypes.sizeof(ctypes.c_longdouble)
    if size == LONG_DOUBLE_VALUE_BYTES:
        return []
    if issubclass(ctype, ctypes.c_longdouble):
        return [(LONG_DOUBLE_VALUE_BYTES, size)]
    element: object = getattr(ctype, "_type_", None)  # an array's element type
    length: object = getattr(ctype, "_length_", None)
    if isinstance(element, type) and isinstance(length, int):
        inner = _long_double_padding(element)
        stride = ctypes.sizeof(element)
        return [(start + index * stride, end + index * stride)
                for index in range(length) for start, end in inner]
    if issubclass(ctype, ctypes.Union):
        return []  # which member holds the bytes is not known: they are written as given
    ranges: list[tuple[int, int]] = []
    for klass in ctype.__mro__:  # inherited fields too
        fields: tuple[tuple[Any, ...], ...] = tuple(vars(klass).get("_fields_", ()))
        for field in fields:
            offset: int = getattr(ctype, field[0]).offset
            ranges += [(offset + start, offset + end)
                       for start, end in _long_double_padding(field[1])]
    return ranges


def _aggregate_layout(ctype: type[Any], name: str) -> TypeLayout:
    size = ctypes.sizeof(ctype)
    from_buffer_copy = ctype.from_buffer_copy
    padding = _long_double_padding(ctype)

    def unpack_from(buffer: Any, offset: int) -> Any:
        return from_buffer_copy(buffer, offset)

    def pack_into(buffer: Any, offset: int, value: Any) -> None:
        if type(value) is not ctype:
            raise InvalidArgumentType(f"a {name} value", f"a {name} instance", value)
        if not padding:
            buffer[offset:offset + size] = bytes(value)
            return
        encoded = bytearray(bytes(value))
        for start, end in padding:
            encoded[start:end] = bytes(end - start)
        buffer[offset:offset + size] = encoded

    return TypeLayout(ctype, name, size, ctypes.alignment(ctype), False, False, False, True,
                      0, 0, unpack_from, pack_into)


def _scalar_layout(ctype: type[Any], name: str) -> TypeLayout:
    code = getattr(ctype, "_type_", "")
    if code in _REFUSED_CODES:
        raise NotByteValued(name, _REFUSED_CODES[code])
    size = ctypes.sizeof(ctype)
    alignment = ctypes.alignment(ctype)
    order = _byte_order_of(ctype)
    native = order == sys.byteorder
    prefix = "<" if order == "little" else ">"
    is_integer = code in _INTEGER_CODES
    is_bool = code == "?"
    minimum = maximum = 0
    if is_integer:
        signed = code in _SIGNED_CODES
        fmt = _STRUCT_INTEGER_FORMATS[size]
        fmt = prefix + (fmt if signed else fmt.upper())
        minimum = -(1 << (size * 8 - 1)) if signed else 0
        maximum = (1 << (size * 8 - 1)) - 1 if signed else (1 << (size * 8)) - 1
    elif is_bool:
        fmt = "?"
        maximum = 1
    elif code in _FLOAT_CODES:
        fmt = prefix + code
    else:
        # c_char, c_wchar, c_longdouble: no struct format; go through ctypes itself.
        return _ctypes_scalar_layout(ctype, name, size, alignment, native)
    codec = struct.Struct(fmt)
    unpack = codec.unpack_from
    pack = codec.pack_into

    def unpack_from(buffer: Any, offset: int) -> Any:
        return unpack(buffer, offset)[0]

    def pack_into(buffer: Any, offset: int, value: Any) -> None:
        if is_integer or is_bool:  # converted once with operator.index, then checked
            number = value if type(value) is int else _as_integer(value, name)
            if not minimum <= number <= maximum:
                raise ValueOutOfRange(name, number, f"not in [{minimum}, {maximum}]")
            pack(buffer, offset, number)
            return
        try:
            pack(buffer, offset, value)
        except OverflowError as error:
            raise ValueOutOfRange(name, value, str(error)) from None
        except struct.error:
            raise InvalidArgumentType(f"a {name} value", "a float", value) from None

    native_code = None
    if is_integer and native:
        native_code = _STRUCT_INTEGER_FORMATS[size]
        native_code = native_code if minimum < 0 else native_code.upper()
    return TypeLayout(ctype, name, size, alignment, True, is_integer, is_bool, native,
                      minimum, maximum, unpack_from, pack_into, unpack,
                      pack if is_integer else None, native_code, size.bit_length() - 1)


def _as_integer(value: object, name: str) -> int:
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgumentType(f"a {name} value", "an int", value) from None


def _ctypes_scalar_layout(ctype: type[Any], name: str, size: int, alignment: int,
                          native: bool) -> TypeLayout:
    from_buffer_copy = ctype.from_buffer_copy
    from_buffer = ctype.from_buffer

    def unpack_from(buffer: Any, offset: int) -> Any:
        try:
            return from_buffer_copy(buffer, offset).value
        except ValueError as error:  # c_wchar: not every bit pattern is a character
            raise InvalidGuestValue(offset, name, str(error)) from None

    padding = _long_double_padding(ctype)

    def pack_into(buffer: Any, offset: int, value: Any) -> None:
        encoded = bytearray(size)
        try:
            from_buffer(encoded).value = value
        except (TypeError, ValueError) as error:
            raise ValueOutOfRange(name, value, str(error)) from None
        for start, end in padding:  # a long double's: host bytes (LONG_DOUBLE_VALUE_BYTES)
            encoded[start:end] = bytes(end - start)
        buffer[offset:offset + size] = encoded

    return TypeLayout(ctype, name, size, alignment, True, False, False, native, 0, 0,
                      unpack_from, pack_into)
