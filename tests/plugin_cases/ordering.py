# targets: x86_64 riscv32
"""Check 4: a literal memory ordering invalid for the operation."""
import ctypes

from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap, Ordering


def chosen() -> Ordering:
    return Ordering.RELEASE


memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x10000)])
word = AlignedGuestAddress.new(ctypes.c_uint32, 0x100)

memory.read_atomic(word, Ordering.RELEASE)  # E: vm-memory-ordering
memory.write_atomic(word, 1, Ordering.ACQUIRE)  # E: vm-memory-ordering
memory.compare_exchange(word, 1, 2, failure=Ordering.ACQ_REL)  # E: vm-memory-ordering
memory.read_atomic(word, order=Ordering.ACQ_REL)  # E: vm-memory-ordering
memory.get_slice(GuestAddress(0x100), 4).get_ref(ctypes.c_uint32, 0).write_atomic(1, Ordering.ACQUIRE)  # E: vm-memory-ordering

memory.read_atomic(word, Ordering.ACQUIRE)
memory.write_atomic(word, 1, Ordering.RELEASE)
memory.fetch_add(word, 1, Ordering.ACQ_REL)
memory.compare_exchange(word, 1, 2, Ordering.ACQ_REL, Ordering.ACQUIRE)
memory.write_atomic(word, 1, chosen())
