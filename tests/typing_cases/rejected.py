"""What the type system alone refuses, without any plugin. Each marked line must be an
error for both mypy and pyright, and no other line may be."""
import ctypes

from vm_memory import AlignedGuestAddress, Be32, GuestAddress, GuestMemoryMmap, Le16


class Header(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint32),)


memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x1000)])
header = AlignedGuestAddress.new(Header, GuestAddress(0x100))
real = AlignedGuestAddress.new(ctypes.c_float, GuestAddress(0x108))
swapped = AlignedGuestAddress.new(Be32, GuestAddress(0x10C))
small = AlignedGuestAddress.new(Le16, GuestAddress(0x110))
word = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(0x114))

memory.read_atomic(header)  # rejected: a Structure is not AtomicAccess
memory.fetch_add(real, 1)  # rejected: a float is not AtomicAccess
memory.write_atomic(swapped, 1)  # rejected: an explicit-endian type is not AtomicAccess
memory.swap(small, 1)  # rejected: an explicit-endian type is not AtomicAccess
memory.read_obj(GuestAddress(0x114))  # rejected: a GuestAddress is not aligned
memory.read_atomic(GuestAddress(0x114))  # rejected: a GuestAddress is not aligned
AlignedGuestAddress(0x114)  # rejected: direct construction
memory.write_atomic(word, "1")  # rejected: a str is not a value
