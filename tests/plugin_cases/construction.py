# targets: x86_64 riscv32
"""Check 1: AlignedGuestAddress only through its checked constructors."""
import ctypes

from vm_memory import AlignedGuestAddress, GuestAddress

Alias = AlignedGuestAddress

direct = AlignedGuestAddress(0x1000)  # E: vm-memory-aligned-construction
# Subscripted, mypy checks the arguments before the plugin can widen them: both report.
subscripted = AlignedGuestAddress[ctypes.c_uint32](0x1000)  # E: vm-memory-aligned-construction  # E: arg-type
aliased = Alias(GuestAddress(0))  # E: vm-memory-aligned-construction
raw = AlignedGuestAddress.__new__(AlignedGuestAddress)  # E: vm-memory-aligned-construction

checked = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(0x1000))
maybe = AlignedGuestAddress.try_new(ctypes.c_uint32, 0x1000)
upward = AlignedGuestAddress.align_up(ctypes.c_uint64, 0x1001)
downward = Alias.align_down(ctypes.c_uint64, GuestAddress(0x1001))
further = checked.offset(4)
