"""Fullnames of the library's classes, and which of their methods each check looks at."""

from __future__ import annotations

from typing import Final

ALIGNED_ADDRESS: Final = "vm_memory.aligned_address.AlignedGuestAddress"
GUEST_ADDRESS: Final = "vm_memory.address.GuestAddress"
ORDERING_ENUM: Final = "vm_memory.ordering.Ordering"
GUEST_MEMORY: Final = "vm_memory.guest_memory.GuestMemory"
VOLATILE_REF: Final = "vm_memory.volatile.VolatileRef"
VOLATILE_SLICE: Final = "vm_memory.volatile.VolatileSlice"
ATOMIC_INTEGER: Final = "vm_memory.atomic_access.AtomicInteger"
ENUM_BASES: Final = ("enum.IntEnum", "enum.IntFlag")

METADATA_KEY: Final = "vm_memory_mypy"
"""Where the plugin keeps what it learned of a class (the incremental cache carries it)."""

RECEIVERS: Final = (GUEST_MEMORY, VOLATILE_REF, VOLATILE_SLICE)
"""Library classes whose methods are hooked also when called on a subclass."""
LIBRARY_CLASSES: Final = {name.rpartition(".")[2]: name
                          for name in (*RECEIVERS, ALIGNED_ADDRESS)}
"""Short name -> fullname: how mypy names a method called on a TypeVar receiver
(`"read_atomic of GuestMemory"`)."""

LOADS: Final = frozenset({"RELAXED", "ACQUIRE", "SEQ_CST"})
STORES: Final = frozenset({"RELAXED", "RELEASE", "SEQ_CST"})
READ_MODIFY_WRITES: Final = frozenset({"RELAXED", "ACQUIRE", "RELEASE", "ACQ_REL",
                                       "SEQ_CST"})
FAILURES: Final = LOADS
"""The ordering rules of `vm_memory.ordering`, by member name (tests/plugin/test_facts.py
holds them equal to the run time's sets)."""

GUEST_MEMORY_ATOMICS: Final = {
    "read_atomic": {"order": LOADS},
    "write_atomic": {"order": STORES},
    "swap": {"order": READ_MODIFY_WRITES},
    "compare_exchange": {"success": READ_MODIFY_WRITES, "failure": FAILURES},
    "fetch_add": {"order": READ_MODIFY_WRITES},
    "fetch_sub": {"order": READ_MODIFY_WRITES},
    "fetch_and": {"order": READ_MODIFY_WRITES},
    "fetch_or": {"order": READ_MODIFY_WRITES},
    "fetch_xor": {"order": READ_MODIFY_WRITES},
}
"""Atomic methods of GuestMemory: the orderings each ordering parameter allows."""
VOLATILE_REF_ATOMICS: Final = {
    name: GUEST_MEMORY_ATOMICS[name]
    for name in ("read_atomic", "write_atomic", "swap", "compare_exchange", "fetch_add")
}
CHECKED_CONSTRUCTORS: Final = ("new", "try_new", "align_up", "align_down")
ALIGNED_VALUE_CONSTRUCTORS: Final = ("new", "try_new")
"""The constructors for which a misaligned constant is a bug (the others align it)."""
