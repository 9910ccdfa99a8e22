"""One function typed against `GuestMemory`, run over three kinds of guest memory.

`exercise` knows nothing about what backs the memory it is given: it runs the whole
access table (bulk copies, typed objects, unaligned values, atomics) and checks each
result. Over host memory (`GuestMemoryMmap`) and over a Python device model
(`DeviceRegion`) everything works; over a file reached with pread/pwrite (`FileRegion`)
the plain accesses work and every atomic operation is refused with
`AtomicAccessUnsupported`: never a silent non-atomic access under an atomic name.

Run: python examples/generic_access.py
"""

from __future__ import annotations

import ctypes
import tempfile
from collections.abc import Callable
from typing import ClassVar

from vm_memory import (
    AlignedGuestAddress,
    AtomicAccessUnsupported,
    DeviceRegion,
    FileRegion,
    GuestAddress,
    GuestMemory,
    GuestMemoryMmap,
    Le16,
    Le32,
    Ordering,
)

SIZE = 0x4000


class Header(ctypes.Structure):
    """A little-endian device header, as a guest would lay it out."""

    _fields_: ClassVar = [("magic", Le32), ("version", Le16), ("flags", Le16)]


class Scratchpad:
    """A device model whose bytes live in a Python bytearray (a `MemoryDevice`)."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.data[offset:offset + size])

    def write(self, offset: int, data: bytes) -> None:
        self.data[offset:offset + len(data)] = data


def exercise(memory: GuestMemory, base: GuestAddress) -> dict[str, str]:
    """Run every kind of access at ``base``; map each to "ok" or the error it raised."""
    header_at = AlignedGuestAddress.new(Header, base + 0x100)
    counter = AlignedGuestAddress.new(ctypes.c_uint64, base + 0x200)

    def bulk() -> None:
        memory.write_slice(base, b"generic guest memory")
        assert memory.read_bytes(base, 20) == b"generic guest memory"

    def typed_object() -> None:
        memory.write_obj(header_at, Header(0x564D4D31, 2, 0x8001))
        header = memory.read_obj(header_at)
        assert (header.magic, header.version, header.flags) == (0x564D4D31, 2, 0x8001)

    def unaligned_value() -> None:
        memory.write_obj_unaligned(base + 0x301, ctypes.c_uint32, 0xCAFEF00D)
        assert memory.read_obj_unaligned(base + 0x301, ctypes.c_uint32) == 0xCAFEF00D

    def atomic_store_load() -> None:
        memory.write_atomic(counter, 41, Ordering.RELEASE)
        assert memory.read_atomic(counter, Ordering.ACQUIRE) == 41

    def atomic_fetch_add() -> None:
        before = memory.fetch_add(counter, 1)
        assert memory.read_atomic(counter) == before + 1

    def atomic_compare_exchange() -> None:
        current = memory.read_atomic(counter)
        assert memory.compare_exchange(counter, current, 7) == (True, current)
        assert memory.compare_exchange(counter, current, 9) == (False, 7)

    def atomic_swap() -> None:
        previous = memory.swap(counter, 100)
        assert memory.read_atomic(counter) == 100 and previous in (7, 41, 42)

    operations: dict[str, Callable[[], None]] = {
        "write_slice / read_bytes": bulk,
        "write_obj / read_obj": typed_object,
        "*_obj_unaligned": unaligned_value,
        "write_atomic / read_atomic": atomic_store_load,
        "fetch_add": atomic_fetch_add,
        "compare_exchange": atomic_compare_exchange,
        "swap": atomic_swap,
    }
    results: dict[str, str] = {}
    for name, operation in operations.items():
        try:
            operation()
        except AtomicAccessUnsupported:
            results[name] = "AtomicAccessUnsupported"
        else:
            results[name] = "ok"
    return results


def main() -> None:
    with tempfile.TemporaryFile() as backing:
        backing.truncate(SIZE)
        memories: dict[str, GuestMemory] = {
            "GuestMemoryMmap": GuestMemoryMmap.from_ranges([(GuestAddress(0), SIZE)]),
            "DeviceRegion": GuestMemory([DeviceRegion(Scratchpad(SIZE), GuestAddress(0),
                                                      SIZE)]),
            "FileRegion": GuestMemory([FileRegion(backing.fileno(), GuestAddress(0), SIZE)]),
        }
        table = {kind: exercise(memory, GuestAddress(0x1000))
                 for kind, memory in memories.items()}
    operations = list(next(iter(table.values())))
    print((f"{'operation':28}" + "".join(f"{kind:26}" for kind in table)).rstrip())
    for operation in operations:
        cells = "".join(f"{table[kind][operation]:26}" for kind in table)
        print(f"{operation:28}{cells}".rstrip())


if __name__ == "__main__":
    main()
