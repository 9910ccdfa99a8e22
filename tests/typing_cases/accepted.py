"""Correct use of the API: no errors from any supported checker (mypy with or without
the plugin, pyright, ty, pyrefly)."""
import array
import ctypes
import mmap

from vm_memory import (
    AlignedGuestAddress,
    GuestAddress,
    GuestMemory,
    GuestMemoryMmap,
    Le16,
    Le32,
    Le64,
    Ordering,
    VolatileRef,
)


class Descriptor(ctypes.Structure):
    """The annotation pattern: each field's value type, declared beside `_fields_`."""

    _fields_ = (("address", Le64), ("length", Le32), ("flags", Le16))
    address: int
    length: int
    flags: int


def exercise(memory: GuestMemory) -> tuple[int, bool, float, Descriptor, int]:
    counter = AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(0x100))
    flag = AlignedGuestAddress.new(ctypes.c_bool, GuestAddress(0x108))
    real = AlignedGuestAddress.new(ctypes.c_double, GuestAddress(0x110))
    slot = AlignedGuestAddress.new(Descriptor, GuestAddress(0x200))
    memory.write_atomic(counter, 1, Ordering.RELEASE)
    count: int = memory.fetch_add(counter, 1)
    ok, seen = memory.compare_exchange(counter, 2, 3, Ordering.ACQ_REL, Ordering.ACQUIRE)
    was_set: bool = memory.fetch_or(flag, True)
    memory.write_obj(real, 1.5)
    value: float = memory.read_obj(real)
    memory.write_obj(slot, Descriptor(0x8000, 64, 1))
    descriptor: Descriptor = memory.read_obj(slot)
    payload = memory.read_bytes(GuestAddress(descriptor.address), descriptor.length)
    unaligned: int = memory.read_obj_unaligned(GuestAddress(0x301), Le32)
    reference: VolatileRef[ctypes.c_uint32] = memory.get_slice(
        GuestAddress(0x400), 8).get_ref(ctypes.c_uint32, 4)
    reference.write_atomic(7)
    small: int = memory.get_slice(GuestAddress(0x410), 2).get_ref(ctypes.c_uint16, 0).load()
    loaded: int = memory.read_atomic(counter, Ordering.ACQUIRE)
    following: int = memory.read_atomic(counter + 8)  # `+` keeps AlignedGuestAddress[T]
    return (count + seen + unaligned + int(ok) + loaded + small + following + len(payload),
            was_set, value, descriptor, reference.read_atomic())


def copy_buffers(memory: GuestMemory) -> None:
    """Anything with the buffer protocol is a source; writable ones are destinations."""
    where = GuestAddress(0x800)
    memory.write_slice(where, b"bytes")
    memory.write(where, memoryview(b"view"))
    memory.write_slice(where, array.array("I", [1, 2]))
    memory.read_slice(where, bytearray(4))
    memory.read_slice(where, memoryview(bytearray(4)))
    memory.read(where, array.array("B", bytes(4)))
    memory.read_slice(where, (ctypes.c_uint8 * 4)())
    with mmap.mmap(-1, 4096) as mapping:
        memory.read_slice(where, mapping)
        memory.write_slice(where, mapping)
    memory.get_slice(where, 8).copy_to(bytearray(8))


memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x1000)])
exercise(memory)
copy_buffers(memory)
