# targets: x86_64 riscv32 mips
"""Check 3b: an atomic access wider than the target's lock-free width."""
import ctypes

from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap

memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x10000)])
quad = AlignedGuestAddress.new(ctypes.c_uint64, 0x100)
signed_quad = AlignedGuestAddress.new(ctypes.c_int64, 0x108)
long_long = AlignedGuestAddress.new(ctypes.c_ulonglong, 0x110)
long = AlignedGuestAddress.new(ctypes.c_ulong, 0x118)
size = AlignedGuestAddress.new(ctypes.c_size_t, 0x120)
word = AlignedGuestAddress.new(ctypes.c_uint32, 0x128)

memory.read_atomic(quad)  # E[riscv32,mips]: vm-memory-atomic-width
memory.fetch_add(signed_quad, 1)  # E[riscv32,mips]: vm-memory-atomic-width
memory.write_atomic(long_long, 1)  # E[riscv32,mips]: vm-memory-atomic-width

memory.read_atomic(long)
memory.fetch_add(size, 1)
memory.read_atomic(word)
memory.read_obj(quad)
