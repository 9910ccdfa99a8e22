# targets: x86_64 riscv32
"""Check 3a: atomic operations only on AtomicAccess types."""
import ctypes

from vm_memory import AlignedGuestAddress, Be32, GuestAddress, GuestMemoryMmap


class Header(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint32),)


memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x10000)])
floating = AlignedGuestAddress.new(ctypes.c_float, 0x100)
big_endian = AlignedGuestAddress.new(Be32, 0x104)
flag = AlignedGuestAddress.new(ctypes.c_bool, 0x108)
header = AlignedGuestAddress.new(Header, 0x10C)
double = AlignedGuestAddress.new(ctypes.c_double, 0x110)
word = AlignedGuestAddress.new(ctypes.c_uint32, 0x118)
short = AlignedGuestAddress.new(ctypes.c_int16, 0x11C)

memory.read_atomic(floating)  # E: vm-memory-atomic-type
memory.write_atomic(big_endian, 1)  # E: vm-memory-atomic-type
memory.fetch_add(flag, 1)  # E: vm-memory-atomic-type
memory.swap(header, 1)  # E: vm-memory-atomic-type
memory.compare_exchange(double, 0, 1)  # E: vm-memory-atomic-type

memory.read_atomic(word)
memory.fetch_or(flag, True)
memory.swap(short, -1)
memory.read_obj(floating)
memory.write_obj(big_endian, 1)
