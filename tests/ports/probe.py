"""What the runtime reports about its data model and atomics, as one JSON object.

Run by the interpreter under test (`python probe.py '<json request>'`, with the
repository on PYTHONPATH); the request names the ctypes scalars and the atomic types to
report on by their mypy fullnames (`ctypes.c_long`, `vm_memory.endian.Be64`). Nothing
here consults the plugin: the host compares the answer with the plugin's row.

Per scalar: `ctypes.sizeof`, `ctypes.alignment`, the offset of the scalar after one byte
in a Structure (its alignment as a field), and the alignment `AlignedGuestAddress`
requires of it. Per atomic type: a real `write_atomic`, `fetch_add` and `read_atomic` on
mmap'd guest memory, reported as "ok" only if the values and the bytes left in memory
(native byte order) are right, else the error's type and message.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import sys
from typing import Any

from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap

ATOMIC_SLOT = 0x100


def resolve(fullname: str) -> Any:
    module, _, name = fullname.rpartition(".")
    return getattr(importlib.import_module(module), name)


def scalar_facts(ctype: Any) -> dict[str, Any]:
    class Field(ctypes.Structure):
        _fields_ = (("pad", ctypes.c_uint8), ("value", ctype))

    return {"size": ctypes.sizeof(ctype), "alignment": ctypes.alignment(ctype),
            "field_alignment": Field.value.offset,  # pyright: ignore[reportAttributeAccessIssue]
            "required_alignment": AlignedGuestAddress.new(ctype, GuestAddress(0)).alignment}


def atomic_outcome(ctype: Any) -> str:
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x1000)])
    before: object
    after: object
    try:
        slot = AlignedGuestAddress.new(ctype, GuestAddress(ATOMIC_SLOT))
        size = ctypes.sizeof(ctype)
        if ctype is ctypes.c_bool:
            memory.write_atomic(slot, False)
            before, after = memory.swap(slot, True), memory.read_atomic(slot)
            expected: tuple[object, object] = (False, True)
        else:
            start = (1 << (8 * size - 2)) - 3  # no byte palindrome: a swap shows
            memory.write_atomic(slot, start)
            before, after = memory.fetch_add(slot, 5), memory.read_atomic(slot)
            expected = (start, start + 5)
        stored = memory.read_bytes(GuestAddress(ATOMIC_SLOT), size)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    if (before, after) != expected:
        return f"wrong values: got {(before, after)}, expected {expected}"
    if stored != int(after).to_bytes(size, sys.byteorder):
        return f"wrong bytes in memory: {stored.hex()} for {int(after):#x}"
    return "ok"


def lock_free() -> dict[str, bool]:
    """libatomic's own answer for each width (for the record: 16 is beyond vm_memory)."""
    library = ctypes.CDLL("libatomic.so.1")
    probe = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_size_t, ctypes.c_void_p)(
        ("__atomic_is_lock_free", library))
    return {str(size): bool(probe(size, None)) for size in (1, 2, 4, 8, 16)}


def main() -> None:
    request = json.loads(sys.argv[1])
    print(json.dumps({
        "byteorder": sys.byteorder,
        "pointer_size": ctypes.sizeof(ctypes.c_void_p),
        "libatomic_lock_free": lock_free(),
        "scalars": {name: scalar_facts(resolve(name)) for name in request["scalars"]},
        "atomics": {name: atomic_outcome(resolve(name)) for name in request["atomics"]},
    }))


if __name__ == "__main__":
    main()
