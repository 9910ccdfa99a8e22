# targets: x86_64 riscv32
"""Check 5: a Structure/Union with a field that is not plain data, used as ByteValued."""
import ctypes

from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap, Le16


class Named(ctypes.Structure):
    _fields_ = (("length", ctypes.c_uint32), ("name", ctypes.c_char_p))


class Linked(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint64), ("next", ctypes.POINTER(ctypes.c_uint64))]


class Outer(ctypes.Structure):
    _fields_ = (("inner", Named), ("tag", ctypes.c_uint8))


class Handle(ctypes.Union):
    _fields_ = (("raw", ctypes.c_uint64), ("pointer", ctypes.c_void_p))


class Descriptor(ctypes.Structure):
    _fields_ = (("address", ctypes.c_uint64), ("length", ctypes.c_uint32),
                ("flags", Le16), ("next", Le16))


class Table(ctypes.Structure):
    _fields_ = (("entries", Descriptor * 4), ("bytes", ctypes.c_uint8 * 16))


class NeverUsed(ctypes.Structure):
    _fields_ = (("callback", ctypes.py_object),)


memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x10000)])

AlignedGuestAddress.new(Named, 0)  # E: vm-memory-byte-valued
memory.read_obj_unaligned(GuestAddress(8), Linked)  # E: vm-memory-byte-valued
AlignedGuestAddress.try_new(Outer, 0x100)  # E: vm-memory-byte-valued
memory.write_obj_unaligned(GuestAddress(0x200), Handle, Handle())  # E: vm-memory-byte-valued

memory.read_obj(AlignedGuestAddress.new(Descriptor, 0x300))
memory.read_obj_unaligned(GuestAddress(0x401), Table)
AlignedGuestAddress.align_up(Table, 0x500)
