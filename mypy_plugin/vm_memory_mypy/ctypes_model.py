"""What the plugin knows of ctypes and vm_memory types, by their mypy fullnames."""

from __future__ import annotations

from typing import Final

from vm_memory_mypy.targets import Target

FIXED_SIZES: Final = {
    "ctypes.c_bool": 1, "ctypes.c_byte": 1, "ctypes.c_ubyte": 1, "ctypes.c_char": 1,
    "ctypes.c_short": 2, "ctypes.c_ushort": 2, "ctypes.c_int": 4, "ctypes.c_uint": 4,
    "ctypes.c_longlong": 8, "ctypes.c_ulonglong": 8,
    "ctypes.c_int16": 2, "ctypes.c_uint16": 2, "ctypes.c_int32": 4, "ctypes.c_uint32": 4,
    "ctypes.c_int64": 8, "ctypes.c_uint64": 8, "ctypes.c_float": 4, "ctypes.c_double": 8,
    **{f"vm_memory.endian.{prefix}{bits}": bits // 8
       for prefix in ("Le", "Be", "LeI", "BeI") for bits in (16, 32, 64)},
}
LONG_TYPES: Final = frozenset({"ctypes.c_long", "ctypes.c_ulong"})
POINTER_SIZED_TYPES: Final = frozenset({"ctypes.c_size_t", "ctypes.c_ssize_t"})

ATOMIC_TYPES: Final = frozenset({
    "ctypes.c_bool", "ctypes.c_byte", "ctypes.c_ubyte", "ctypes.c_short", "ctypes.c_ushort",
    "ctypes.c_int", "ctypes.c_uint", "ctypes.c_long", "ctypes.c_ulong", "ctypes.c_longlong",
    "ctypes.c_ulonglong", "ctypes.c_int16", "ctypes.c_uint16", "ctypes.c_int32",
    "ctypes.c_uint32", "ctypes.c_int64", "ctypes.c_uint64", "ctypes.c_size_t",
    "ctypes.c_ssize_t",
})
"""Native-endian integer and bool scalars: the AtomicAccess types."""

NOT_BYTE_VALUED: Final = {
    "ctypes.c_char_p": "c_char_p points to a Python-owned string",
    "ctypes.c_wchar_p": "c_wchar_p points to a Python-owned string",
    "ctypes.c_void_p": "c_void_p is an address in this process",
    "ctypes.py_object": "py_object holds a Python object reference",
}
NOT_BYTE_VALUED_BASES: Final = {
    "_ctypes._Pointer": "a pointer is an address in this process",
    "_ctypes.CFuncPtr": "a function pointer is an address in this process",
}
POINTER_FACTORIES: Final = frozenset({
    "ctypes.POINTER", "ctypes.pointer", "ctypes.CFUNCTYPE", "ctypes.PYFUNCTYPE",
    "_ctypes.POINTER", "_ctypes.pointer",
})
AGGREGATE_BASES: Final = ("_ctypes.Structure", "_ctypes.Union", "ctypes.Structure",
                          "ctypes.Union", "ctypes.BigEndianStructure",
                          "ctypes.LittleEndianStructure")


def scalar_size(fullname: str, target: Target) -> int | None:
    """Size in bytes of a ctypes scalar (or vm_memory endian type) on `target`."""
    if fullname in FIXED_SIZES:
        return FIXED_SIZES[fullname]
    if fullname in LONG_TYPES:
        return target.long_size
    if fullname in POINTER_SIZED_TYPES:
        return target.architecture.pointer_size
    if fullname == "ctypes.c_longdouble":
        return target.long_double_size
    if fullname == "ctypes.c_wchar":
        return target.wchar_size
    return None


def scalar_alignment(fullname: str, target: Target) -> int | None:
    """The alignment `AlignedGuestAddress` requires of a scalar, as the run time computes
    it (`aligned_address.required_alignment`): its size when that is a power of two (what
    an atomic access needs), else its C alignment (i686's 12-byte long double: 4)."""
    size = scalar_size(fullname, target)
    if size is None:
        return None
    if size & (size - 1) == 0:
        return size
    return field_alignment(fullname, target)


def field_alignment(fullname: str, target: Target) -> int | None:
    """Alignment of a scalar as a Structure field: the C ABI's (4 for i686 int64)."""
    if fullname == "ctypes.c_longdouble":
        return target.long_double_alignment
    size = scalar_size(fullname, target)
    if size is None:
        return None
    if size == 8:
        return target.eight_byte_field_alignment
    return size
