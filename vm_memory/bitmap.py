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
from collections.abc import Iterator
from typing import Final

from vm_memory.atomic_access import atomic_kind
from vm_memory.atomic_backend import host_atomics
from vm_memory.errors import InvalidRange
from vm_memory.ordering import Ordering

DEFAULT_PAGE_SIZE: Final = mmap.PAGESIZE
_WORD: Final = 8
_SCAN_CHUNK: Final = 1 << 20
"""Pages scanned per copy of the map: bounds the memory a scan of a huge guest takes."""


class DirtyBitmap:
    """Dirty marks for `length` bytes in pages of `page_size` (a power of two)."""

    __slots__ = ("_map", "_map_address", "_pin", "_shift", "length", "page_count",
                 "page_size", "view")

    def __init__(self, length: int, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        if page_size <= 0 or page_size & (page_size - 1):
            raise InvalidRange(0, page_size, "the dirty page size must be a power of two")
        self.length = length
        self.page_size = page_size
        self._shift = page_size.bit_length() - 1
        self.page_count = (length + page_size - 1) >> self._shift
        words = (self.page_count + _WORD - 1) // _WORD
        self._map = mmap.mmap(-1, max(words * _WORD, 1), flags=mmap.MAP_PRIVATE)
        self._pin = ctypes.c_char.from_buffer(self._map)
        self._map_address = ctypes.addressof(self._pin)
        self.view = memoryview(self._map)

    def mark(self, offset: int, length: int) -> None:
        """Mark the pages holding `[offset, offset + length)` dirty."""
        first = offset >> self._shift
        last = (offset + length - 1) >> self._shift
        if first == last:
            self.view[first] = 1
        else:
            self.view[first:last + 1] = b"\x01" * (last + 1 - first)

    def is_dirty(self, page: int) -> bool:
        """Whether page number `page` is marked."""
        return bool(self.view[page])

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

        Each 8-page word seen marked is swapped to zero with one atomic exchange, and the
        pages are taken from what the exchange returned, so a mark set meanwhile is
        either taken now or left for the next call.
        """
        exchange = host_atomics(atomic_kind(ctypes.c_uint64)).exchange
        pages: list[int] = []
        last_word = -1
        for page in self._marked():
            word = page - page % _WORD
            if word == last_word:
                continue
            last_word = word
            taken = exchange(self._map_address + word, 0, Ordering.SEQ_CST)
            pages.extend(word + index for index in range(_WORD)
                         if taken >> (8 * index) & 0xFF)
        return pages

    def clear(self) -> None:
        """Forget every mark (not safe beside writers; use `take_dirty_pages` there)."""
        self.view[:] = bytes(len(self.view))
