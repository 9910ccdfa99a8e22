"""Correct use of the API: no errors from mypy (with or without the plugin) or pyright."""
import ctypes

from vm_memory import (
    AlignedGuestAddress,
    GuestAddress,
    GuestMemory,
    GuestMemoryMmap,
    Le32,
    Ordering,
    VolatileRef,
)


class Descriptor(ctypes.Structure):
    _fields_ = (("address", ctypes.c_uint64), ("length", Le32))


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
    memory.write_obj(slot, Descriptor(0x8000, 64))
    descriptor: Descriptor = memory.read_obj(slot)
    unaligned: int = memory.read_obj_unaligned(GuestAddress(0x301), Le32)
    reference: VolatileRef[ctypes.c_uint32] = memory.get_slice(
        GuestAddress(0x400), 8).get_ref(ctypes.c_uint32, 4)
    reference.write_atomic(7)
    loaded: int = memory.read_atomic(counter, Ordering.ACQUIRE)
    return count + seen + unaligned + int(ok) + loaded, was_set, value, descriptor, \
        reference.read_atomic()


exercise(GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x1000)]))
