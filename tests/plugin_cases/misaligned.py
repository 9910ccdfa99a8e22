# targets: x86_64 i686
"""Check 2: a constant address misaligned for T in a checked constructor."""
import ctypes
from typing import Final

from vm_memory import AlignedGuestAddress, GuestAddress, Le32

BASE: Final = 0x1004


class Pair(ctypes.Structure):
    _fields_ = (("low", ctypes.c_uint64), ("high", ctypes.c_uint64))


def unknown_address() -> int:
    return 0x1000


AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(0x1002))  # E: vm-memory-misaligned
AlignedGuestAddress.new(ctypes.c_uint64, BASE)  # E: vm-memory-misaligned
AlignedGuestAddress.new(ctypes.c_uint32, 0x1000 + 2)  # E: vm-memory-misaligned
AlignedGuestAddress.try_new(Le32, GuestAddress(0x7))  # E: vm-memory-misaligned
AlignedGuestAddress.new(Pair, 0x1004)  # E[x86_64]: vm-memory-misaligned

AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(BASE))
AlignedGuestAddress.new(ctypes.c_uint8, 0x1001)
AlignedGuestAddress.align_up(ctypes.c_uint64, 0x1001)
AlignedGuestAddress.new(ctypes.c_uint64, unknown_address())
AlignedGuestAddress.new(Pair, 0x1008)
