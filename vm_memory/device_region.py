"""DeviceRegion: guest memory served by a Python device model, with no host memory.

Every access, plain or atomic, goes through the device's `read`/`write` under the
region's lock. The device's state is reachable only through the region, so an atomic
operation (a read, compute and write under that lock) is indivisible against every other
access to it: the atomic table works here without a host pointer. (A lock is the right
tool here, unlike on shared memory: no other process or vCPU can reach the device's
bytes except through this object.)
"""
# pyright: reportPrivateUsage=false

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Protocol

from vm_memory.address import GuestAddress
from vm_memory.atomic_access import AtomicTypeInfo
from vm_memory.atomic_operations import AtomicOperation
from vm_memory.errors import DeviceError, ReadOnlyRegion, RegionIoError
from vm_memory.region import GuestMemoryRegion


class MemoryDevice(Protocol):
    """What a device model provides: byte reads and writes at offsets in its window."""

    def read(self, offset: int, size: int) -> bytes:
        """Return exactly `size` bytes at `offset`."""
        ...

    def write(self, offset: int, data: bytes) -> None:
        """Store `data` at `offset`."""
        ...


_DEVICE_REGIONS: weakref.WeakSet[DeviceRegion] = weakref.WeakSet()


def _reset_locks_after_fork() -> None:
    """A child forked while another thread held a device's lock would deadlock on it."""
    for region in list(_DEVICE_REGIONS):
        region._reset_lock()


os.register_at_fork(after_in_child=_reset_locks_after_fork)


class DeviceRegion(GuestMemoryRegion):
    """A window of guest physical memory whose bytes a `MemoryDevice` serves."""

    __slots__ = ("_holder", "_lock", "device")

    def __init__(self, device: MemoryDevice, start: GuestAddress, length: int, *,
                 read_only: bool = False) -> None:
        super().__init__(start, length, read_only=read_only)
        self.device = device
        self._lock = threading.Lock()
        self._holder: int | None = None  # the thread inside the device, if any
        _DEVICE_REGIONS.add(self)

    def _reset_lock(self) -> None:
        self._lock = threading.Lock()
        self._holder = None

    @property
    def kind(self) -> str:
        return "device region"

    def _enter(self, offset: int, size: int) -> None:
        """Take the device's lock; a device calling back into its own region from its
        `read` or `write` is refused (it would wait for itself for ever)."""
        if self._holder == threading.get_ident():
            raise DeviceError(self.start_value + offset, size, "the device's own read or "
                              "write accessed its region again")
        self._lock.acquire()
        self._holder = threading.get_ident()

    def _leave(self) -> None:
        self._holder = None
        self._lock.release()

    def _read(self, offset: int, size: int) -> bytes:
        """The device's `size` bytes at `offset`, checked: a bytes-like answer of exactly
        `size` bytes (another type or length is `DeviceError`), its OSError a
        `RegionIoError`. Called holding the lock."""
        try:
            data = self.device.read(offset, size)
        except OSError as error:
            raise RegionIoError.of(self.start_value + offset, size, error) from None
        try:
            raw = memoryview(data).tobytes()
        except (TypeError, ValueError):  # not a buffer; a released view, a closed mmap
            raise DeviceError(self.start_value + offset, size, "the device returned "
                              f"{type(data).__name__}, not bytes") from None
        if len(raw) != size:
            raise DeviceError(self.start_value + offset, size,
                              f"the device returned {len(raw)} bytes")
        return raw

    def _write(self, offset: int, data: bytes) -> None:
        try:
            self.device.write(offset, data)
        except OSError as error:
            raise RegionIoError.of(self.start_value + offset, len(data), error) from None

    def read_into(self, offset: int, destination: memoryview) -> None:
        self._enter(offset, len(destination))
        try:
            data = self._read(offset, len(destination))
        finally:
            self._leave()
        destination[:] = data

    def write_from(self, offset: int, source: memoryview) -> None:
        if self.read_only:
            raise ReadOnlyRegion(self.start_value + offset, len(source))
        self._enter(offset, len(source))
        try:
            self._write(offset, bytes(source))
        finally:
            self._leave()

    def atomic(self, operation: AtomicOperation, offset: int, info: AtomicTypeInfo,
               operands: tuple[int, ...], order: int, failure: int) -> Any:
        """Read, compute (the operation table's `apply`) and write back under the lock
        every access takes: indivisible against every other access to the device."""
        value_type = info.value_type
        self._enter(offset, info.size)
        try:
            data = self._read(offset, info.size)
            old = info.decode(value_type.from_buffer_copy(data).value)
            new, result = operation.apply(old, operands)
            if new is not None:
                self._write(offset, bytes(value_type(info.wrap(new))))
            return result
        finally:
            self._leave()
