"""DirtyBitmap: which pages of a region the library has written, for live migration.

One byte per page rather than one bit: marking is then a plain byte store (a single
bytecode under the GIL, idempotent, so concurrent writers can never lose each other's
marks) instead of a read-modify-write that would need an atomic operation on every
guest write. Taking the dirty set swaps each non-zero 8-page word to zero with one
hardware atomic exchange, so a writer marking at the same moment either lands in this
take or stays for the next one: no dirty page is ever lost. The map lives in an
anonymous mapping, so a large sparse guest commits map pages only where it is written.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from collections.abc import Callable, Iterator
from typing import Final

from vm_memory.address import as_int, check_power_of_two, check_u64
from vm_memory.atomic_access import atomic_type_info
from vm_memory.atomic_backend import host_atomics, is_lock_free
from vm_memory.errors import (
    AtomicWidthUnsupported,
    InvalidArgumentType,
    InvalidRange,
    MappingError,
)
from vm_memory.ordering import Ordering

DEFAULT_PAGE_SIZE: Final = mmap.PAGESIZE
_WORD: Final = 8
_SCAN_CHUNK: Final = 1 << 20
MAX_MAPPING_SIZE: Final = sys.maxsize
"""Pages scanned per copy of the map: bounds the memory a scan of a huge guest takes."""


def _exchange_word() -> tuple[Callable[[int, int, int], int], int]:
    """The atomic exchange of the widest lock-free unsigned word (at most 8 bytes; a host
    without 8-byte atomics takes its marks 4 at a time), and its width."""
    for ctype in (ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint16, ctypes.c_uint8):
        width = ctypes.sizeof(ctype)
        if is_lock_free(width):
            return host_atomics(atomic_type_info(ctype)).functions["exchange"], width
    raise AtomicWidthUnsupported("c_uint8", 1)


class DirtyBitmap:
    """Dirty marks for `length` bytes in pages of `page_size` (a power of two)."""

    __slots__ = ("_map", "_map_address", "_pin", "_shift", "length", "page_count",
                 "page_size", "view")

    def __init__(self, length: int, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        page_size = check_power_of_two(page_size)
        length = check_u64(length, "length")
        if length > MAX_MAPPING_SIZE:
            raise InvalidRange(0, length, "larger than any mapping this host can make")
        self.length = length
        self.page_size = page_size
        self._shift = page_size.bit_length() - 1
        self.page_count = (length + page_size - 1) >> self._shift
        words = (self.page_count + _WORD - 1) // _WORD
        try:
            self._map = mmap.mmap(-1, max(words * _WORD, 1), flags=mmap.MAP_PRIVATE)
        except OSError as error:
            raise MappingError(words * _WORD, error.strerror or str(error)) from None
        self._pin = ctypes.c_char.from_buffer(self._map)
        self._map_address = ctypes.addressof(self._pin)
        self.view = memoryview(self._map)

    def __setattr__(self, name: str, value: object) -> None:
        """Each field is set once, at construction: `take_dirty_pages` exchanges words at
        the map's address for the pages its view shows, and a region tracking dirty pages
        copied the address and page count for the compiled paths."""
        if hasattr(self, name):
            raise AttributeError(f"DirtyBitmap.{name} is fixed at construction")
        object.__setattr__(self, name, value)

    def mark(self, offset: int, length: int) -> None:
        """Mark the pages holding `[offset, offset + length)` dirty; the part past the end
        of the tracked memory is ignored (as in Rust vm-memory), and so is an empty range."""
        try:
            first = offset >> self._shift
            last = (offset + length - 1) >> self._shift
        except TypeError:
            raise InvalidArgumentType("mark's offset and length", "ints", (offset, length)
                                      ) from None
        if first == last and 0 <= first < self.page_count and length > 0:
            self.view[first] = 1
        elif length > 0 and 0 <= first < self.page_count:
            last = min(last, self.page_count - 1)
            self.view[first:last + 1] = b"\x01" * (last + 1 - first)
        elif first < 0 or length < 0:  # never from the library: its offsets are checked
            raise InvalidRange(offset, length, "a dirty mark needs a non-negative offset "
                                               "and length")

    def is_dirty(self, page: int) -> bool:
        """Whether page number `page` is marked (a page past the end never is)."""
        page = as_int(page, "a page number")
        return 0 <= page < self.page_count and bool(self.view[page])

    def _marked(self) -> Iterator[int]:
        """Page numbers whose mark is set, found chunk by chunk (no copy of the whole map)."""
        for chunk_start in range(0, self.page_count, _SCAN_CHUNK):
            chunk = self.view[chunk_start:min(chunk_start + _SCAN_CHUNK, self.page_count)]
            data = chunk.tobytes()
            position = data.find(1)
            while position >= 0:
                yield chunk_start + position
                position = data.find(1, position + 1)

    def dirty_pages(self) -> list[int]:
        """Page numbers marked dirty, without clearing them."""
        return list(self._marked())

    def take_dirty_pages(self) -> list[int]:
        """Page numbers marked dirty, clearing exactly those marks atomically.

        Each word of marks seen set (8 pages where 8-byte atomics are lock-free, else the
        widest width that is) is swapped to zero with one atomic exchange, and the pages
        are taken from the bytes the exchange returned, so a mark set meanwhile is either
        taken now or left for the next call.
        """
        exchange, width = _exchange_word()
        pages: list[int] = []
        last_word = -1
        for page in self._marked():
            word = page - page % width
            if word == last_word:
                continue
            last_word = word
            taken = exchange(self._map_address + word, 0, Ordering.SEQ_CST)
            marks = taken.to_bytes(width, sys.byteorder)  # byte i is page word + i
            pages.extend(word + index for index, mark in enumerate(marks) if mark)
        return pages

    def clear(self) -> None:
        """Forget every mark (not safe beside writers; use `take_dirty_pages` there)."""
        self.view[:] = bytes(len(self.view))
