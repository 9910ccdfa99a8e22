"""Buffers through CPython's buffer protocol: callers' buffers as flat byte views, and
held exports (reached with ctypes).

An export pins its object's memory (an `mmap` refuses to close or resize while one is
held) and tells the address of its first byte: what a mapping needs to stay mapped under
raw-pointer atomics, and what a copy needs to see whether two buffers overlap.
"""

from __future__ import annotations

import ctypes
from typing import Any

from vm_memory.errors import InvalidArgumentType


def byte_view(buffer: Any, *, writable: bool, what: str) -> memoryview:
    """`buffer` as a flat byte view: any contiguous buffer, writable where written into;
    anything else is `InvalidArgumentType` naming `what`."""
    try:
        view = memoryview(buffer)
    except (TypeError, ValueError):  # not a buffer; a released memoryview
        raise InvalidArgumentType(what, "a bytes-like object", buffer) from None
    if writable and view.readonly:
        raise InvalidArgumentType(what, "a writable buffer", buffer)
    if not view.c_contiguous:
        raise InvalidArgumentType(what, "a contiguous buffer", buffer)
    if view.format == "B" and view.ndim == 1:
        return view
    if not view.nbytes:  # a zero in its shape, which cast refuses: no bytes either way
        return memoryview(bytearray())
    return view.cast("B")


class BufferExport(ctypes.Structure):
    """CPython's `Py_buffer`: one held export of an object's buffer."""

    _fields_ = (
        ("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )

    @property
    def address(self) -> int:
        """The address of the first byte (0 for an empty buffer)."""
        return self.buf or 0


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(BufferExport), ctypes.c_int)
_get_buffer.restype = ctypes.c_int
_release = ctypes.pythonapi.PyBuffer_Release
_release.argtypes = (ctypes.POINTER(BufferExport),)
_release.restype = None
_PyBUF_SIMPLE = 0


def export_buffer(obj: Any) -> BufferExport | None:
    """A held export of `obj`'s whole buffer (contiguous), or None if it refuses one."""
    export = BufferExport()
    try:
        if _get_buffer(obj, ctypes.byref(export), _PyBUF_SIMPLE) != 0:
            return None
    except (TypeError, BufferError, ValueError):
        return None
    return export


def release_buffer(export: BufferExport) -> None:
    """Release an export taken by `export_buffer`."""
    _release(ctypes.byref(export))


def buffer_address(obj: Any) -> int | None:
    """The address of `obj`'s first byte (its buffer must be contiguous), or None."""
    export = export_buffer(obj)
    if export is None:
        return None
    try:
        return export.address
    finally:
        release_buffer(export)
