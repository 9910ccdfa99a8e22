"""Who holds which regions: what makes an explicit close safe.

A memory object (every `GuestMemory`, and so every view and snapshot holding one) may
read a region's host address at any moment, so a mapping may be unmapped only while no
live memory object holds any region placed on it. Memory objects register here when
they are made; a close counts the holders of every region on the mapping and unmaps
only at zero, under the same lock, so no memory object can appear in between.

Registration is one weak reference per memory object (not per region), so a hot-plug
change costs the same whatever the number of regions.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable
from typing import Protocol


class RegionHolder(Protocol):
    """A memory object: it can say whether it holds a region (by identity)."""

    def holds(self, region: object) -> bool:
        """Whether `region` is one of this object's regions."""
        ...

    def uses_host_memory(self, low: int, high: int) -> bool:
        """Whether any of this object's regions reaches host memory in [low, high)."""
        ...


_lock = threading.RLock()
_holders: weakref.WeakSet[RegionHolder] = weakref.WeakSet()


def _reset_after_fork() -> None:
    """A child forked while another thread held the lock would deadlock on it."""
    global _lock
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_reset_after_fork)


def lifetime_lock() -> threading.RLock:
    """The lock that serializes registrations with closes."""
    return _lock


def register(holder: RegionHolder) -> None:
    """Count `holder` as a user of its regions for as long as it lives (call it with
    `lifetime_lock()` held, after checking that none of its regions is closed)."""
    _holders.add(holder)


def holders_of(regions: Iterable[object]) -> int:
    """How many live memory objects hold any of `regions` (call with the lock held)."""
    regions = list(regions)
    return sum(1 for holder in list(_holders)
               if any(holder.holds(region) for region in regions))


def holders_of_host_memory(low: int, high: int) -> int:
    """How many live memory objects have a region whose host memory lies in [low, high):
    a region built by hand on a mapping's buffer is no placement of it, yet its host
    pointer dies with the mapping (call with the lock held)."""
    return sum(1 for holder in list(_holders) if holder.uses_host_memory(low, high))
