"""Static types of the byte buffers the bulk methods copy between.

`Buffer` is any object with the buffer protocol (PEP 688: bytes, bytearray, memoryview,
array.array, mmap, ctypes objects); `WritableBuffer` is one that can also be written
into — bytearray, memoryview, array.array, mmap, a ctypes array, not bytes or a str.
They exist for the type checkers only (the run time checks each buffer it is given).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from typing_extensions import Buffer

    class WritableBuffer(Buffer, Protocol):
        """A buffer that can be filled: slice assignment is what bytes lacks."""

        def __setitem__(self, key: slice, value: Any, /) -> None: ...


__all__ = ["Buffer", "WritableBuffer"]
