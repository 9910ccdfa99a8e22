"""GuestMemoryAtomic: a holder that swaps immutable memory snapshots for hot-plug.

Readers take `memory()` — a snapshot whose layout never changes under them — and use it
for as long as they like; a region removed meanwhile stays mapped until the last
snapshot or view holding it is gone. Writers change the layout under a lock by building
a new snapshot (`insert_region`/`remove_region` return new objects) and publishing it
with one reference assignment, which readers see whole or not at all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from vm_memory.address import GuestAddress
from vm_memory.errors import InvalidArgumentType
from vm_memory.guest_memory import GuestMemory
from vm_memory.region import GuestMemoryRegion

_M = TypeVar("_M", bound=GuestMemory)


def _checked_memory(memory: _M, what: str) -> _M:
    """`memory` if it is a `GuestMemory` by its real type (readers use what is published)."""
    if not issubclass(type(memory), GuestMemory):
        raise InvalidArgumentType(what, "a GuestMemory", memory)
    return memory


class GuestMemoryAtomic(Generic[_M]):
    """The current memory snapshot, replaced atomically by layout changes."""

    __slots__ = ("_current", "_update_lock")

    def __init__(self, memory: _M) -> None:
        self._current = _checked_memory(memory, "GuestMemoryAtomic's memory")
        self._update_lock = threading.Lock()

    def memory(self) -> _M:
        """The current snapshot (immutable: hold it for as long as needed)."""
        return self._current

    def update(self, change: Callable[[_M], _M]) -> _M:
        """Publish `change(current)` as the new snapshot; updates are serialized."""
        with self._update_lock:
            self._current = _checked_memory(change(self._current), "the updated memory")
            return self._current

    def insert_region(self, region: GuestMemoryRegion) -> _M:
        """Publish a snapshot with `region` added."""
        return self.update(lambda memory: memory.insert_region(region))

    def remove_region(self, address: GuestAddress, length: int) -> GuestMemoryRegion:
        """Publish a snapshot without the region `[address, +length)`; return it."""
        removed: list[GuestMemoryRegion] = []

        def change(memory: _M) -> _M:
            smaller, region = memory.remove_region(address, length)
            removed.append(region)
            return smaller

        self.update(change)
        return removed[0]
