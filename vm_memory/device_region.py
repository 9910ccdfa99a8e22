"""DeviceRegion: guest memory served by a Python device model, with no host memory.

Every access, plain or atomic, goes through the device's `read`/`write` under the
region's lock. The device's state is reachable only through the region, so an atomic
operation (a read, compute and write under that lock) is indivisible against every other
access to it: the atomic table works here without a host pointer. (A lock is the right
tool here, unlike on shared memory: no other process or vCPU can reach the device's
bytes except through this object.)
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from vm_memory.address import GuestAddress
from vm_memory.atomic_access import AtomicKind
from vm_memory.errors import ReadOnlyRegion
from vm_memory.region import GuestMemoryRegion


class MemoryDevice(Protocol):
    """What a device model provides: byte reads and writes at offsets in its window."""

    def read(self, offset: int, size: int) -> bytes:
        """Return exactly `size` bytes at `offset`."""
        ...

    def write(self, offset: int, data: bytes) -> None:
        """Store `data` at `offset`."""
        ...


def _apply(operation: str, old: int, value: int) -> int:
    if operation == "add":
        return old + value
    if operation == "sub":
        return old - value
    if operation == "and":
        return old & value
    if operation == "or":
        return old | value
    return old ^ value


class DeviceRegion(GuestMemoryRegion):
    """A window of guest physical memory whose bytes a `MemoryDevice` serves."""

    __slots__ = ("_lock", "device")

    def __init__(self, device: MemoryDevice, start: GuestAddress, length: int, *,
                 read_only: bool = False) -> None:
        super().__init__(start, length, read_only=read_only)
        self.device = device
        self._lock = threading.Lock()

    @property
    def kind(self) -> str:
        return "device region"

    def read_into(self, offset: int, destination: memoryview) -> None:
        with self._lock:
            data = self.device.read(offset, len(destination))
        if len(data) != len(destination):
            raise ValueError(f"device returned {len(data)} bytes, {len(destination)} asked")
        destination[:] = data

    def write_from(self, offset: int, source: memoryview) -> None:
        if self.read_only:
            raise ReadOnlyRegion(self.start_value + offset, len(source))
        with self._lock:
            self.device.write(offset, bytes(source))

    # Atomics: read, compute and write back under the lock every access takes.

    def _load(self, offset: int, kind: AtomicKind) -> Any:
        return kind.value_type.from_buffer_copy(self.device.read(offset, kind.size)).value

    def _store(self, offset: int, kind: AtomicKind, value: int) -> None:
        self.device.write(offset, bytes(kind.value_type(value)))

    def atomic_load(self, offset: int, kind: AtomicKind, order: int) -> Any:
        with self._lock:
            return self._load(offset, kind)

    def atomic_store(self, offset: int, kind: AtomicKind, value: int, order: int) -> None:
        with self._lock:
            self._store(offset, kind, value)

    def atomic_exchange(self, offset: int, kind: AtomicKind, value: int, order: int) -> Any:
        with self._lock:
            old = self._load(offset, kind)
            self._store(offset, kind, value)
            return old

    def atomic_compare_exchange(self, offset: int, kind: AtomicKind, expected: int,
                                desired: int, success: int, failure: int) -> tuple[bool, Any]:
        with self._lock:
            old = self._load(offset, kind)
            if old == expected:
                self._store(offset, kind, desired)
                return True, old
            return False, old

    def atomic_fetch(self, operation: str, offset: int, kind: AtomicKind, value: int,
                     order: int) -> Any:
        with self._lock:
            old = self._load(offset, kind)
            # Wrap at the type's width, as the hardware would.
            result = _apply(operation, int(old), value) & ((1 << (kind.size * 8)) - 1)
            self._store(offset, kind, result)
            return old
