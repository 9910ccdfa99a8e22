"""What the type system alone refuses, without any plugin. Each marked line names the
guarantee it shows (`# rejected[<guarantee>]`); a checker that keeps a guarantee reports
an error on each of its lines, and no checker reports one on an unmarked line. The
README's table of checkers says which checker keeps which guarantee
(tests/test_type_checkers.py holds the two equal)."""
import ctypes

from vm_memory import AlignedGuestAddress, Be32, GuestAddress, GuestMemoryMmap, Le16, Le64


class Header(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint32), ("address", Le64))
    flags: int
    address: int


memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x1000)])
header = AlignedGuestAddress.new(Header, GuestAddress(0x100))
real = AlignedGuestAddress.new(ctypes.c_float, GuestAddress(0x108))
swapped = AlignedGuestAddress.new(Be32, GuestAddress(0x10C))
small = AlignedGuestAddress.new(Le16, GuestAddress(0x110))
word = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(0x114))

memory.read_atomic(header)  # rejected[atomic-type]: a Structure is not AtomicAccess
memory.fetch_add(real, 1)  # rejected[atomic-type]: a float is not AtomicAccess
memory.write_atomic(swapped, 1)  # rejected[atomic-type]: an explicit-endian type
memory.swap(small, 1)  # rejected[atomic-type]: an explicit-endian type is not AtomicAccess
memory.read_obj(GuestAddress(0x114))  # rejected[aligned-address]: a GuestAddress is not aligned
memory.read_atomic(GuestAddress(0x114))  # rejected[aligned-address]: a GuestAddress is not aligned
AlignedGuestAddress(0x114)  # rejected[construction]: direct construction
memory.write_atomic(word, "1")  # rejected[atomic-value]: a str is not a value
AlignedGuestAddress.new(ctypes.c_uint32, 0x114)  # rejected[int-address]: an int is not an address
memory.read_bytes(memory.read_obj(header).address, 4)  # rejected[field-types]: a field is an int
memory.write_slice(GuestAddress(0), "text")  # rejected[buffers]: a str is not a buffer
memory.read_slice(GuestAddress(0), b"read-only")  # rejected[buffers]: bytes cannot be filled
