"""ByteValued sees every field a Structure has, inherited ones included.

ctypes lays a subclass's `_fields_` after its bases'. A check that reads only a class's
own `_fields_` accepts a Structure that inherits a pointer, and a guest-written value then
becomes a host pointer: a SIGSEGV, or host memory disclosed when the guest writes a real
host address. The disclosure is shown in a child process (the control), then refused.
"""

from __future__ import annotations

import ctypes
import json
import sys
import textwrap
from typing import Any, Final

import pytest
from support import run_python

from vm_memory import (
    AlignedGuestAddress,
    GuestAddress,
    GuestMemoryMmap,
    NotByteValued,
    is_byte_valued,
)


class Plain(ctypes.Structure):
    _fields_ = (("length", ctypes.c_uint32),)


def _pointer_bases() -> dict[str, type[Any]]:
    callback = ctypes.CFUNCTYPE(ctypes.c_int)
    bases: dict[str, type[Any]] = {}
    for name, field in (("c_char_p", ctypes.c_char_p), ("c_void_p", ctypes.c_void_p),
                        ("c_wchar_p", ctypes.c_wchar_p), ("py_object", ctypes.py_object),
                        ("POINTER", ctypes.POINTER(ctypes.c_uint64)), ("CFUNCTYPE", callback)):
        bases[name] = type(f"Base_{name}", (ctypes.Structure,), {"_fields_": (("p", field),)})
    return bases


POINTER_BASES: Final = _pointer_bases()


@pytest.mark.parametrize("field", sorted(POINTER_BASES))
def test_inherited_pointer_field_is_refused(field: str) -> None:
    base = POINTER_BASES[field]
    derived: Any = type("Derived", (base,), {"_fields_": (("x", ctypes.c_uint32),)})
    bare = type("Bare", (base,), {})  # no fields of its own: all inherited
    grandchild = type("Grandchild", (derived,), {"_fields_": (("y", ctypes.c_uint8),)})
    nested = type("Nested", (ctypes.Structure,), {"_fields_": (("inner", derived),)})
    in_array = derived * 2
    for ctype in (derived, bare, grandchild, nested, in_array):
        assert not is_byte_valued(ctype), ctype
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x1000)])
    for ctype in (derived, nested):
        with pytest.raises(NotByteValued) as raised:
            memory.read_obj_unaligned(GuestAddress(0), ctype)
        assert "'p'" in str(raised.value) or "'inner'" in str(raised.value)
        with pytest.raises(NotByteValued):
            AlignedGuestAddress.new(ctype, GuestAddress(0))


def test_inherited_plain_fields_are_accepted() -> None:
    """The control on the other side: plain inherited fields are fine, laid out after
    the base's, and read back in place."""
    child: Any = type("Child", (Plain,), {"_fields_": (("flags", ctypes.c_uint16),)})
    assert is_byte_valued(child)
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x1000)])
    memory.write_slice(GuestAddress(0x10),
                       (7).to_bytes(4, sys.byteorder) + (3).to_bytes(2, sys.byteorder))
    value: Any = memory.read_obj(AlignedGuestAddress.new(child, GuestAddress(0x10)))
    assert (value.length, value.flags) == (7, 3)


DISCLOSE: Final = textwrap.dedent('''
    import ctypes, json, sys
    from vm_memory import *
    secret = ctypes.create_string_buffer(b"host secret")
    class Base(ctypes.Structure):
        _fields_ = (("name", ctypes.c_char_p),)
    class Request(Base):
        _fields_ = (("length", ctypes.c_uint32),)
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x1000)])
    # the guest writes a host address where the structure has its inherited pointer
    memory.write_slice(GuestAddress(0), ctypes.addressof(secret).to_bytes(
        ctypes.sizeof(ctypes.c_void_p), sys.byteorder))
    copied = Request.from_buffer_copy(memory.read_bytes(GuestAddress(0), ctypes.sizeof(Request)))
    result = {"without_check": copied.name.decode()}
    try:
        memory.read_obj_unaligned(GuestAddress(0), Request)
        result["library"] = "accepted"
    except NotByteValued as error:
        result["library"] = "refused: " + str(error)
    print(json.dumps(result))
''')


def test_a_guest_value_never_becomes_a_host_pointer() -> None:
    """Without the check, the copied structure reads host memory the guest pointed at
    (the control); the library refuses the type instead."""
    child = run_python("-c", DISCLOSE, timeout=120)
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert result["without_check"] == "host secret"
    assert result["library"].startswith("refused: Request is not ByteValued: field 'name'")
