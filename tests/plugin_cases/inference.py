# targets: x86_64 riscv32
"""Inference: precise value types, and alignment kept or lost by arithmetic."""
import ctypes
from typing import assert_type

from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap, Le64


class Descriptor(ctypes.Structure):
    _fields_ = (("address", Le64), ("length", ctypes.c_uint32))


memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x10000)])
word = AlignedGuestAddress.new(ctypes.c_uint32, 0x100)
flag = AlignedGuestAddress.new(ctypes.c_bool, 0x104)
real = AlignedGuestAddress.new(ctypes.c_double, 0x108)
descriptor = AlignedGuestAddress.new(Descriptor, 0x200)

assert_type(memory.read_atomic(word), int)
assert_type(memory.read_atomic(flag), bool)
assert_type(memory.compare_exchange(word, 1, 2), tuple[bool, int])
assert_type(memory.read_obj(real), float)
assert_type(memory.read_obj(descriptor), Descriptor)
assert_type(memory.read_obj_unaligned(GuestAddress(3), Le64), int)
assert_type(word + 8, AlignedGuestAddress[ctypes.c_uint32])
assert_type(word + 2, GuestAddress)
assert_type(word - 4, AlignedGuestAddress[ctypes.c_uint32])
assert_type(word.offset(3), AlignedGuestAddress[ctypes.c_uint32])
assert_type(memory.get_slice(GuestAddress(0x100), 8).get_ref(ctypes.c_uint64, 0).load(), int)
