"""ByteValued types: what may be copied to and from guest memory as plain bytes.

Accepted: every ctypes scalar, the explicit-endian types, and Structures, Unions and
Arrays of them at any depth. Refused with `NotByteValued` (naming the offending
field): pointers, strings by pointer, `py_object`, function pointers, and aggregates
holding any of them. Values are checked too: a value that does not fit its type
raises `ValueOutOfRange` and writes nothing.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from collections.abc import Callable, Iterator
from typing import Any, Final

import pytest
from support import stable_id

from vm_memory import (
    AlignedGuestAddress,
    Be16,
    Be32,
    Be64,
    BeI16,
    BeI32,
    BeI64,
    GuestAddress,
    GuestMemoryMmap,
    Le16,
    Le32,
    Le64,
    LeI16,
    LeI32,
    LeI64,
    NotByteValued,
    ValueOutOfRange,
    is_byte_valued,
)
from vm_memory.byte_valued import LONG_DOUBLE_VALUE_BYTES

PAGE: Final = mmap.PAGESIZE
FIRST: Final = 0x10_0000
"""Two adjacent regions: [FIRST, BOUNDARY) and [BOUNDARY, BOUNDARY + PAGE)."""
BOUNDARY: Final = FIRST + PAGE


@pytest.fixture
def memory() -> Iterator[GuestMemoryMmap]:
    """Two adjacent one-page regions filled with a recognisable pattern."""
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(FIRST), PAGE),
                                          (GuestAddress(BOUNDARY), PAGE)])
    memory.write_slice(GuestAddress(FIRST), bytes(range(256)) * (2 * PAGE // 256))
    yield memory


def everything(memory: GuestMemoryMmap) -> bytes:
    """All bytes of both regions, straight from the mmaps."""
    return b"".join(region.mapping.view[:] for region in memory.regions())


def placements(size: int) -> list[int]:
    """Inside the first region (aligned and not), and straddling the two regions."""
    return [FIRST, FIRST + 1, FIRST + 64, BOUNDARY - max(1, size // 2)]


# ---- Scalars --------------------------------------------------------------------------

INTEGER_TYPES: Final[list[type[Any]]] = [
    ctypes.c_byte, ctypes.c_ubyte, ctypes.c_short, ctypes.c_ushort, ctypes.c_int,
    ctypes.c_uint, ctypes.c_long, ctypes.c_ulong, ctypes.c_longlong, ctypes.c_ulonglong,
    ctypes.c_size_t, ctypes.c_ssize_t, ctypes.c_int8, ctypes.c_uint8, ctypes.c_int16,
    ctypes.c_uint16, ctypes.c_int32, ctypes.c_uint32, ctypes.c_int64, ctypes.c_uint64,
    Le16, Le32, Le64, LeI16, LeI32, LeI64, Be16, Be32, Be64, BeI16, BeI32, BeI64,
]
BIG_ENDIAN_FLOAT: Final[type[Any]] = ctypes.c_float.__ctype_be__
LITTLE_ENDIAN_DOUBLE: Final[type[Any]] = ctypes.c_double.__ctype_le__

SAMPLE_SCALARS: Final[list[tuple[type[Any], object, type[Any]]]] = [
    *[(ctype, 0x5A, int) for ctype in INTEGER_TYPES],
    *[(ctype, -0x5A, int) for ctype in INTEGER_TYPES if ctype(-1).value == -1],
    (ctypes.c_float, 1.5, float), (ctypes.c_double, -2.25, float),
    (ctypes.c_longdouble, 0.125, float), (BIG_ENDIAN_FLOAT, 3.5, float),
    (LITTLE_ENDIAN_DOUBLE, 1e300, float),
    (ctypes.c_bool, True, bool), (ctypes.c_bool, False, bool),
    (ctypes.c_char, b"Z", bytes), (ctypes.c_wchar, "\u03bb", str),
]


def encoded(ctype: type[Any], value: object) -> bytes:
    """`value` as `ctype`, what guest memory must hold: an x87 long double's value is its
    first 10 bytes and the rest must be zero, not what ctypes' setter left there (bytes
    of its own C stack)."""
    scratch = bytearray(ctypes.sizeof(ctype))
    ctype.from_buffer(scratch).value = value
    if issubclass(ctype, ctypes.c_longdouble):
        scratch[LONG_DOUBLE_VALUE_BYTES:] = bytes(len(scratch) - LONG_DOUBLE_VALUE_BYTES)
    return bytes(scratch)


def _bounds(ctype: type[Any]) -> tuple[int, int]:
    bits = ctypes.sizeof(ctype) * 8
    if ctype(-1).value == -1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


@pytest.mark.parametrize(("ctype", "value", "python_type"), SAMPLE_SCALARS,
                         ids=stable_id)
def test_scalar_round_trip(memory: GuestMemoryMmap, ctype: type[Any], value: object,
                           python_type: type[Any]) -> None:
    """Written and read back as a plain Python value, in one region and across two."""
    assert is_byte_valued(ctype)
    size = ctypes.sizeof(ctype)
    for address in placements(size):
        memory.write_obj_unaligned(GuestAddress(address), ctype, value)
        result = memory.read_obj_unaligned(GuestAddress(address), ctype)
        assert type(result) is python_type
        assert result == value
        assert memory.read_bytes(GuestAddress(address), size) == encoded(ctype, value)


def test_no_host_bytes_reach_the_guest_through_a_long_double(memory: GuestMemoryMmap) -> None:
    """Every way of storing a long double writes its value and zeros: never the padding
    bytes of a ctypes object just allocated, which held host heap data (pointers among
    them) before the fix, in most of 200 stores."""
    ctype = ctypes.c_longdouble
    size = ctypes.sizeof(ctype)
    aligned = AlignedGuestAddress.new(ctype, GuestAddress(FIRST + 4 * size))
    ref = memory.get_slice(GuestAddress(FIRST + 8 * size), size).get_ref(ctype, 0)
    stores: dict[str, Callable[[float], None]] = {
        "write_obj_unaligned": lambda value: memory.write_obj_unaligned(
            GuestAddress(FIRST + 1), ctype, value),
        "write_obj": lambda value: memory.write_obj(aligned, value),
        "VolatileRef.store": ref.store,
    }
    readers = {"write_obj_unaligned": GuestAddress(FIRST + 1),
               "write_obj": GuestAddress(aligned.raw_value()),
               "VolatileRef.store": GuestAddress(FIRST + 8 * size)}
    for name, store in stores.items():
        for step in range(200):
            value = step * 0.75 - 3.5
            _churn = [object() for _ in range(step % 7)]  # vary what the allocator hands out
            store(value)
            assert memory.read_bytes(readers[name], size) == encoded(ctype, value), name


def test_no_host_bytes_reach_the_guest_through_an_aggregate_of_long_doubles(
        memory: GuestMemoryMmap) -> None:
    """A caller's own array or Structure of long doubles holds what ctypes' setter left
    in each one's padding (host stack bytes, in 200 of 200 writes before the fix): the
    library writes the values and zeros there."""
    pair = ctypes.c_longdouble * 2

    class Sample(ctypes.Structure):
        _fields_ = (("tag", ctypes.c_uint8), ("reading", ctypes.c_longdouble))

    class Derived(Sample):
        _fields_ = (("more", pair),)

    for step in range(200):
        value = step * 0.75 - 3.5
        for ctype, instance, values in (
                (pair, pair(value, -value), [(0, value), (ctypes.sizeof(ctypes.c_longdouble),
                                                          -value)]),
                (Derived, Derived(1, value, pair(value, value)),
                 [(Sample.__dict__["reading"].offset, value),
                  (Derived.__dict__["more"].offset, value),
                  (Derived.__dict__["more"].offset + ctypes.sizeof(ctypes.c_longdouble), value)])):
            memory.write_obj_unaligned(GuestAddress(FIRST + 3), ctype, instance)
            written = memory.read_bytes(GuestAddress(FIRST + 3), ctypes.sizeof(ctype))
            for offset, expected in values:
                size = ctypes.sizeof(ctypes.c_longdouble)
                assert written[offset:offset + size] == \
                    encoded(ctypes.c_longdouble, expected), (ctype, step)


@pytest.mark.parametrize("ctype", INTEGER_TYPES, ids=stable_id)
def test_integer_extremes_round_trip(memory: GuestMemoryMmap, ctype: type[Any]) -> None:
    low, high = _bounds(ctype)
    aligned = AlignedGuestAddress.new(ctype, GuestAddress(FIRST + 8 * ctypes.sizeof(ctype)))
    for value in (low, high, 0):
        memory.write_obj(aligned, value)
        assert memory.read_obj(aligned) == value
        memory.write_obj_unaligned(GuestAddress(BOUNDARY - 1), ctype, value)
        assert memory.read_obj_unaligned(GuestAddress(BOUNDARY - 1), ctype) == value


@pytest.mark.parametrize(("ctype", "value", "stored"), [
    (Be16, 0x0102, b"\x01\x02"), (Le16, 0x0102, b"\x02\x01"),
    (Be32, 0x01020304, b"\x01\x02\x03\x04"), (Le32, 0x01020304, b"\x04\x03\x02\x01"),
    (Be64, 0x0102030405060708, bytes(range(1, 9))),
    (Le64, 0x0102030405060708, bytes(range(8, 0, -1))),
    (BeI16, -2, b"\xff\xfe"), (LeI16, -2, b"\xfe\xff"),
    (BeI32, -(2**31), b"\x80\x00\x00\x00"), (LeI64, -1, b"\xff" * 8),
], ids=stable_id)
def test_explicit_endian_byte_order(memory: GuestMemoryMmap, ctype: type[Any], value: int,
                                    stored: bytes) -> None:
    """The bytes in guest memory follow the type's byte order, whatever the host's."""
    memory.write_obj_unaligned(GuestAddress(FIRST), ctype, value)
    assert memory.read_bytes(GuestAddress(FIRST), len(stored)) == stored
    assert memory.read_obj_unaligned(GuestAddress(FIRST), ctype) == value


def test_native_integers_use_host_byte_order(memory: GuestMemoryMmap) -> None:
    memory.write_obj_unaligned(GuestAddress(FIRST), ctypes.c_uint32, 0x01020304)
    expected = (0x01020304).to_bytes(4, sys.byteorder)
    assert memory.read_bytes(GuestAddress(FIRST), 4) == expected


# ---- Aggregates -------------------------------------------------------------------------


class Inner(ctypes.Structure):
    _fields_ = (("a", ctypes.c_uint16), ("b", Be32))


class Mixed(ctypes.Union):
    _fields_ = (("raw", ctypes.c_uint8 * 8), ("inner", Inner), ("real", ctypes.c_double))


class Outer(ctypes.Structure):
    _fields_ = (("head", Inner), ("items", Inner * 3), ("choice", Mixed),
                ("flags", ctypes.c_uint32, 5), ("count", ctypes.c_uint32, 27),
                ("grid", (ctypes.c_uint8 * 3) * 2), ("on", ctypes.c_bool))


class WireHeader(ctypes.BigEndianStructure):
    _fields_ = (("magic", ctypes.c_uint32), ("length", ctypes.c_uint16))


class WireWord(ctypes.BigEndianUnion):
    _fields_ = (("word", ctypes.c_uint32), ("halves", ctypes.c_uint16 * 2))


class LittleRecord(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = (("tag", ctypes.c_uint8), ("value", ctypes.c_uint64))


AGGREGATES: Final[list[type[Any]]] = [
    Inner, Mixed, Outer, WireHeader, WireWord, LittleRecord, ctypes.c_uint32 * 4,
    Inner * 2, (ctypes.c_char * 4) * 2,
]


def _sample(ctype: type[Any]) -> Any:
    """An instance whose bytes are all distinct from zero and from the memory pattern."""
    size = ctypes.sizeof(ctype)
    return ctype.from_buffer_copy(bytes((7 * index + 3) % 251 + 1 for index in range(size)))


@pytest.mark.parametrize("ctype", AGGREGATES, ids=stable_id)
def test_aggregate_round_trip(memory: GuestMemoryMmap, ctype: type[Any]) -> None:
    assert is_byte_valued(ctype)
    value = _sample(ctype)
    for address in placements(ctypes.sizeof(ctype)):
        memory.write_obj_unaligned(GuestAddress(address), ctype, value)
        assert memory.read_bytes(GuestAddress(address), ctypes.sizeof(ctype)) == bytes(value)
        result = memory.read_obj_unaligned(GuestAddress(address), ctype)
        assert type(result) is ctype
        assert bytes(result) == bytes(value)
    aligned = AlignedGuestAddress.new(ctype, GuestAddress(FIRST + 2 * 64))
    memory.write_obj(aligned, value)
    assert bytes(memory.read_obj(aligned)) == bytes(value)


def test_big_endian_structure_fields(memory: GuestMemoryMmap) -> None:
    header = WireHeader(magic=0x7F454C46, length=0x0102)
    memory.write_obj_unaligned(GuestAddress(FIRST), WireHeader, header)
    assert memory.read_bytes(GuestAddress(FIRST), 6) == b"\x7fELF\x01\x02"
    assert memory.read_obj_unaligned(GuestAddress(FIRST), WireHeader).magic == 0x7F454C46


@pytest.mark.parametrize("straddle", [False, True], ids=["one region", "two regions"])
def test_aggregate_reads_are_independent_copies(memory: GuestMemoryMmap,
                                                straddle: bool) -> None:
    """Changing what a read returned changes nothing in guest memory, and the reverse."""
    address = GuestAddress(BOUNDARY - 5 if straddle else FIRST + 16)
    memory.write_obj_unaligned(address, Outer, _sample(Outer))
    before = everything(memory)
    first = memory.read_obj_unaligned(address, Outer)
    first.head.a = 0xBEEF
    first.items[1].b = 0x12345678
    ctypes.memset(ctypes.addressof(first), 0, ctypes.sizeof(Outer))
    assert everything(memory) == before
    second = memory.read_obj_unaligned(address, Outer)
    assert bytes(second) == bytes(_sample(Outer))
    memory.write_slice(address, b"\xee" * 8)
    assert bytes(second) == bytes(_sample(Outer)), "a read copy followed guest memory"


def test_aggregate_writes_copy_the_value(memory: GuestMemoryMmap) -> None:
    value = _sample(Inner)
    memory.write_obj_unaligned(GuestAddress(FIRST), Inner, value)
    value.a = 0
    assert memory.read_obj_unaligned(GuestAddress(FIRST), Inner).a == _sample(Inner).a


# ---- Refused types ------------------------------------------------------------------------


class Node(ctypes.Structure):
    """A linked-list node: its `next` is a host pointer."""


Node._fields_ = (("value", ctypes.c_uint32), ("next", ctypes.POINTER(Node)))


class WithCallback(ctypes.Structure):
    _fields_ = (("id", ctypes.c_uint32), ("callback", ctypes.CFUNCTYPE(ctypes.c_int)))


class Holder(ctypes.Structure):
    _fields_ = (("tag", ctypes.c_uint8), ("node", Node))


class Deep(ctypes.Structure):
    _fields_ = (("count", ctypes.c_uint16), ("holders", Holder * 2))


class NameUnion(ctypes.Union):
    _fields_ = (("number", ctypes.c_uint64), ("name", ctypes.c_char_p))


class Incomplete(ctypes.Structure):
    """Declared, never given `_fields_`."""


REFUSED_SCALARS: Final[list[type[Any]]] = [
    ctypes.c_void_p, ctypes.c_char_p, ctypes.c_wchar_p, ctypes.py_object,
    ctypes.POINTER(ctypes.c_int), ctypes.POINTER(Inner), ctypes.CFUNCTYPE(ctypes.c_int),
    ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_int), ctypes.c_void_p * 2,
]

REFUSED_AGGREGATES: Final[list[tuple[type[Any], tuple[str, ...]]]] = [
    (Node, ("Node", "'next'")),
    (WithCallback, ("WithCallback", "'callback'")),
    (Holder, ("Holder", "'node'", "'next'")),
    (Deep, ("Deep", "'holders'", "'node'", "'next'")),
    (NameUnion, ("NameUnion", "'name'")),
    (Node * 2, ("Node",)),
    (Incomplete, ("Incomplete", "_fields_")),
]

NOT_TYPES: Final[list[object]] = [int, bytes, object, ctypes.c_uint32(5), 4, None, Inner()]


def _assert_refused(memory: GuestMemoryMmap, ctype: Any) -> NotByteValued:
    """Every typed entry point refuses `ctype` before touching memory."""
    assert not is_byte_valued(ctype)
    before = everything(memory)
    with pytest.raises(NotByteValued) as raised:
        memory.read_obj_unaligned(GuestAddress(FIRST), ctype)
    with pytest.raises(NotByteValued):
        memory.write_obj_unaligned(GuestAddress(FIRST), ctype, 0)
    with pytest.raises(NotByteValued):
        AlignedGuestAddress.new(ctype, GuestAddress(FIRST))
    assert everything(memory) == before
    return raised.value


@pytest.mark.parametrize("ctype", REFUSED_SCALARS, ids=stable_id)
def test_pointer_like_types_are_refused(memory: GuestMemoryMmap, ctype: type[Any]) -> None:
    error = _assert_refused(memory, ctype)
    assert error.type_name == ctype.__qualname__
    assert error.reason


@pytest.mark.parametrize(("ctype", "named"), REFUSED_AGGREGATES,
                         ids=stable_id)
def test_aggregates_holding_pointers_are_refused(memory: GuestMemoryMmap, ctype: type[Any],
                                                 named: tuple[str, ...]) -> None:
    """The error names the type and the path of fields down to the offending one."""
    error = _assert_refused(memory, ctype)
    message = str(error)
    for part in named:
        assert part in message, (part, message)


@pytest.mark.parametrize("thing", NOT_TYPES, ids=stable_id)
def test_non_ctypes_are_refused(memory: GuestMemoryMmap, thing: object) -> None:
    _assert_refused(memory, thing)


# ---- Values that do not fit ------------------------------------------------------------


def _out_of_range_values(ctype: type[Any]) -> list[int]:
    low, high = _bounds(ctype)
    return [low - 1, high + 1, high + (1 << 64)]


OUT_OF_RANGE: Final[list[tuple[type[Any], object]]] = [
    *[(ctype, value) for ctype in INTEGER_TYPES for value in _out_of_range_values(ctype)],
    (ctypes.c_bool, 2), (ctypes.c_bool, -1), (ctypes.c_float, 1e300),
    (BIG_ENDIAN_FLOAT, -1e300), (ctypes.c_char, b"ab"), (ctypes.c_char, b""),
]


@pytest.mark.parametrize(("ctype", "value"), OUT_OF_RANGE,
                         ids=stable_id)
def test_value_out_of_range_writes_nothing(memory: GuestMemoryMmap, ctype: type[Any],
                                          value: object) -> None:
    """In one region, across two, and aligned: the value is refused before any store."""
    before = everything(memory)
    size = ctypes.sizeof(ctype)
    for address in placements(size):
        with pytest.raises(ValueOutOfRange) as raised:
            memory.write_obj_unaligned(GuestAddress(address), ctype, value)
        assert raised.value.type_name == ctype.__qualname__
        assert raised.value.value == value
    with pytest.raises(ValueOutOfRange):
        memory.write_obj(AlignedGuestAddress.new(ctype, GuestAddress(FIRST + 4 * size)), value)
    assert everything(memory) == before


@pytest.mark.parametrize(("ctype", "value"), [
    (ctypes.c_uint32, "5"), (ctypes.c_uint32, 1.5), (ctypes.c_uint32, None),
    (ctypes.c_double, "1.0"), (Inner, Mixed()), (Inner, b"\x00" * 6),
], ids=stable_id)
def test_value_of_the_wrong_kind_writes_nothing(memory: GuestMemoryMmap, ctype: type[Any],
                                               value: object) -> None:
    before = everything(memory)
    for address in placements(ctypes.sizeof(ctype)):
        with pytest.raises(TypeError):
            memory.write_obj_unaligned(GuestAddress(address), ctype, value)
    assert everything(memory) == before
