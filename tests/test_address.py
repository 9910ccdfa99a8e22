"""Addresses: 64-bit value types with arithmetic that says what happens at 2**64.

Each arithmetic method is checked against Python's unbounded integers on values drawn
near 0, near 2**64 and anywhere; `AlignedGuestAddress` is checked for its constructors
(the only way to make one), its alignment rules and its edge behaviour.
"""

from __future__ import annotations

import copy
import ctypes
import enum
import operator
import pickle
from typing import Any, Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vm_memory import (
    AddressOutOfRange,
    AddressOverflow,
    AlignedAddressConstruction,
    AlignedGuestAddress,
    Be32,
    GuestAddress,
    InvalidArgumentType,
    MemoryRegionAddress,
    MisalignedAddress,
    endian,
)

LIMIT = 1 << 64
TOP = LIMIT - 1
ADDRESS_TYPES = (GuestAddress, MemoryRegionAddress)

u64 = st.one_of(st.integers(0, 64), st.integers(TOP - 64, TOP), st.integers(0, TOP))
powers_of_two = st.integers(0, 63).map(lambda shift: 1 << shift)
address_type = st.sampled_from(ADDRESS_TYPES)


# ---- Construction ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ADDRESS_TYPES)
@pytest.mark.parametrize("value", [0, 1, 0xFFFF_F000, TOP])
def test_construction_in_range(kind: type[GuestAddress], value: int) -> None:
    assert kind(value).raw_value() == value


@pytest.mark.parametrize("kind", ADDRESS_TYPES)
@pytest.mark.parametrize("value", [-1, -(2**64), LIMIT, LIMIT + 1, 2**200])
def test_construction_out_of_range(kind: type[GuestAddress], value: int) -> None:
    with pytest.raises(AddressOutOfRange) as raised:
        kind(value)
    assert raised.value.value == value
    assert raised.value.what == "address"


class Port(enum.IntEnum):
    """An int subclass: accepted, by its integer value."""

    PCI_CONFIG = 0xCF8


@pytest.mark.parametrize("kind", ADDRESS_TYPES)
@pytest.mark.parametrize("value", ["0x1000", 4096.0, None, True, b"\x00", GuestAddress(1),
                                   MemoryRegionAddress(1)])
def test_construction_from_non_int_is_a_type_error(kind: type[GuestAddress],
                                                   value: object) -> None:
    """Not from str/float/bool/bytes, and not from the other address type either."""
    with pytest.raises(TypeError):
        kind(value)  # type: ignore[arg-type]


def test_int_subclass_is_taken_by_value() -> None:
    address = GuestAddress(Port.PCI_CONFIG)
    assert address.raw_value() == 0xCF8
    assert type(address.raw_value()) is int


# ---- Immutability and value semantics -------------------------------------------------


@pytest.mark.parametrize("kind", ADDRESS_TYPES)
def test_immutable(kind: type[GuestAddress]) -> None:
    address = kind(0x1000)
    for name in ("_value", "extra"):
        with pytest.raises(AttributeError):
            setattr(address, name, 0)
        with pytest.raises(AttributeError):
            delattr(address, name)
    assert address.raw_value() == 0x1000


@pytest.mark.parametrize("kind", ADDRESS_TYPES)
def test_not_an_int(kind: type[GuestAddress]) -> None:
    """Not an int subclass: it cannot slip in where an offset or a length is expected."""
    address = kind(8)
    assert not isinstance(address, int)
    with pytest.raises(TypeError):
        [0, 1, 2][address]  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        address + address  # type: ignore[operator]


@given(kind=address_type, value=u64)
def test_pickle_and_copy_round_trip(kind: type[GuestAddress], value: int) -> None:
    address = kind(value)
    for clone in (pickle.loads(pickle.dumps(address)), copy.copy(address),
                  copy.deepcopy(address)):
        assert type(clone) is kind
        assert clone == address
        assert hash(clone) == hash(address)


@given(kind=address_type, first=u64, second=u64)
def test_comparisons_follow_the_integers(kind: type[GuestAddress], first: int,
                                         second: int) -> None:
    a, b = kind(first), kind(second)
    assert (a == b) is (first == second)
    assert (a != b) is (first != second)
    assert (a < b) is (first < second)
    assert (a <= b) is (first <= second)
    assert (a > b) is (first > second)
    assert (a >= b) is (first >= second)
    if a == b:
        assert hash(a) == hash(b)


def test_hashing_groups_equal_addresses() -> None:
    table = {GuestAddress(1): "one", GuestAddress(TOP): "top"}
    assert table[GuestAddress(1)] == "one"
    assert table[GuestAddress(TOP)] == "top"
    assert len({GuestAddress(5), GuestAddress(5), GuestAddress(6)}) == 2
    assert sorted([GuestAddress(3), GuestAddress(TOP), GuestAddress(0)]) == \
        [GuestAddress(0), GuestAddress(3), GuestAddress(TOP)]


def test_the_two_address_types_never_mix() -> None:
    """A guest address and a region offset with the same value are different things."""
    guest, offset = GuestAddress(0x1000), MemoryRegionAddress(0x1000)
    assert guest != offset
    assert offset != guest
    assert guest != 0x1000
    assert len({guest, offset}) == 2
    for compare in (operator.lt, operator.le, operator.gt, operator.ge):
        with pytest.raises(TypeError):
            compare(guest, offset)
        with pytest.raises(TypeError):
            compare(guest, 0x1000)
    with pytest.raises(TypeError):
        guest.offset_from(offset)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        guest.checked_add(offset)  # type: ignore[arg-type]


def test_repr_and_format() -> None:
    assert repr(GuestAddress(0xFEE00000)) == "GuestAddress(0xfee00000)"
    assert repr(MemoryRegionAddress(16)) == "MemoryRegionAddress(0x10)"
    assert f"{GuestAddress(255):#x}" == "0xff"
    assert f"{GuestAddress(255):016x}" == "00000000000000ff"


# ---- Arithmetic against unbounded integers ---------------------------------------------


@given(kind=address_type, value=u64, offset=u64)
def test_addition_at_the_edge(kind: type[GuestAddress], value: int, offset: int) -> None:
    address = kind(value)
    exact = value + offset
    fits = exact <= TOP
    checked = address.checked_add(offset)
    assert checked == (kind(exact) if fits else None)
    assert address.overflowing_add(offset) == (kind(exact % LIMIT), not fits)
    assert address.wrapping_add(offset) == kind(exact % LIMIT)
    if fits:
        assert address.unchecked_add(offset) == kind(exact)
        assert address + offset == kind(exact)
    else:
        for add in (address.unchecked_add, address.__add__):
            with pytest.raises(AddressOverflow) as raised:
                add(offset)
            assert (raised.value.base, raised.value.operation, raised.value.operand) == \
                (value, "+", offset)


@given(kind=address_type, value=u64, offset=u64)
def test_subtraction_at_the_edge(kind: type[GuestAddress], value: int, offset: int) -> None:
    address = kind(value)
    exact = value - offset
    fits = exact >= 0
    assert address.checked_sub(offset) == (kind(exact) if fits else None)
    assert address.overflowing_sub(offset) == (kind(exact % LIMIT), not fits)
    assert address.wrapping_sub(offset) == kind(exact % LIMIT)
    if fits:
        assert address.unchecked_sub(offset) == kind(exact)
        assert address - offset == kind(exact)
        assert address.offset_from(kind(offset)) == exact
    else:
        for sub in (address.unchecked_sub, address.__sub__):
            with pytest.raises(AddressOverflow) as raised:
                sub(offset)
            assert (raised.value.base, raised.value.operation, raised.value.operand) == \
                (value, "-", offset)
        with pytest.raises(AddressOverflow):
            address.offset_from(kind(offset))


@given(kind=address_type, value=u64, alignment=powers_of_two)
def test_alignment_at_the_edge(kind: type[GuestAddress], value: int, alignment: int) -> None:
    address = kind(value)
    down = value - value % alignment
    up = -(-value // alignment) * alignment
    assert address.align_down(alignment) == kind(down)
    assert address.is_aligned(alignment) is (value % alignment == 0)
    if up <= TOP:
        assert address.align_up(alignment) == kind(up)
        assert address.checked_align_up(alignment) == kind(up)
    else:
        assert address.checked_align_up(alignment) is None
        with pytest.raises(AddressOverflow) as raised:
            address.align_up(alignment)
        assert raised.value.base == value
        assert raised.value.operand == alignment


@given(kind=address_type, value=u64, mask=u64)
def test_mask(kind: type[GuestAddress], value: int, mask: int) -> None:
    assert kind(value).mask(mask) == value & mask


def test_edges_spelled_out() -> None:
    """The cases the property tests cover, written down for the reader."""
    top = GuestAddress(TOP)
    assert top.checked_add(0) == top
    assert top.checked_add(1) is None
    assert top.overflowing_add(1) == (GuestAddress(0), True)
    assert top.wrapping_add(2) == GuestAddress(1)
    assert GuestAddress(0).checked_sub(1) is None
    assert GuestAddress(0).overflowing_sub(1) == (GuestAddress(TOP), True)
    assert GuestAddress(0).wrapping_sub(1) == top
    assert GuestAddress(TOP - 0xFFF).align_up(0x1000) == GuestAddress(TOP - 0xFFF)
    assert GuestAddress(TOP - 0xFFE).checked_align_up(0x1000) is None
    assert top.align_down(1 << 63) == GuestAddress(1 << 63)
    assert top.align_up(1) == top


@pytest.mark.parametrize("kind", ADDRESS_TYPES)
@pytest.mark.parametrize("method", ["checked_add", "checked_sub", "overflowing_add",
                                    "overflowing_sub", "wrapping_add", "wrapping_sub",
                                    "unchecked_add", "unchecked_sub", "__add__", "__sub__",
                                    "mask"])
@pytest.mark.parametrize("operand", [-1, LIMIT, 2**100])
def test_operand_out_of_range(kind: type[GuestAddress], method: str, operand: int) -> None:
    """A negative or too-large offset is an error, never a silent wrap."""
    with pytest.raises(AddressOutOfRange) as raised:
        getattr(kind(0x1000), method)(operand)
    assert raised.value.value == operand


@pytest.mark.parametrize("kind", ADDRESS_TYPES)
@pytest.mark.parametrize("operand", [1.0, "1", None, True])
def test_operand_must_be_an_int(kind: type[GuestAddress], operand: object) -> None:
    for method in ("checked_add", "wrapping_sub", "unchecked_add", "mask"):
        with pytest.raises(TypeError):
            getattr(kind(0x1000), method)(operand)


@pytest.mark.parametrize("alignment", [0, 3, 6, 4097, -4, LIMIT])
def test_alignment_must_be_a_power_of_two(alignment: int) -> None:
    address = GuestAddress(0x1000)
    for method in (address.align_up, address.align_down, address.checked_align_up,
                   address.is_aligned):
        with pytest.raises(ValueError):
            method(alignment)


# ---- AlignedGuestAddress ---------------------------------------------------------------


def test_aligned_address_cannot_be_constructed_directly() -> None:
    with pytest.raises(AlignedAddressConstruction):
        AlignedGuestAddress()  # type: ignore[vm-memory-aligned-construction]
    with pytest.raises(AlignedAddressConstruction):
        AlignedGuestAddress(ctypes.c_uint32, 0)  # type: ignore[vm-memory-aligned-construction]


class Descriptor(ctypes.Structure):
    """A virtio-style descriptor: size 16; aligned as its 64-bit field is in the C ABI
    (8, but 4 on i386)."""

    _fields_ = (("addr", ctypes.c_uint64), ("len", ctypes.c_uint32),
                ("flags", ctypes.c_uint16), ("next", ctypes.c_uint16))


ALIGNMENTS: list[tuple[type[Any], int]] = [
    (ctypes.c_uint8, 1), (ctypes.c_uint16, 2), (ctypes.c_uint32, 4), (ctypes.c_uint64, 8),
    (ctypes.c_double, 8), (Be32, 4), (Descriptor, ctypes.alignment(Descriptor)),
    (ctypes.c_uint16 * 3, 2),
]


@pytest.mark.parametrize(("ctype", "alignment"), ALIGNMENTS)
def test_aligned_address_needs_natural_alignment(ctype: type[Any], alignment: int) -> None:
    aligned = AlignedGuestAddress.new(ctype, GuestAddress(0x1000))
    assert aligned.alignment == alignment
    assert aligned.addr == GuestAddress(0x1000)
    assert aligned.type is ctype
    if alignment > 1:
        misaligned = 0x1000 + alignment // 2
        with pytest.raises(MisalignedAddress) as raised:
            AlignedGuestAddress.new(ctype, GuestAddress(misaligned))
        error = raised.value
        assert (error.address, error.alignment, error.space) == (misaligned, alignment, "guest")
        assert AlignedGuestAddress.try_new(ctype, GuestAddress(misaligned)) is None
        upward = AlignedGuestAddress.align_up(ctype, GuestAddress(misaligned))
        assert upward.raw_value() == 0x1000 + alignment
        assert AlignedGuestAddress.align_down(ctype, GuestAddress(misaligned)).raw_value() == 0x1000


@given(value=u64, ctype_alignment=st.sampled_from(ALIGNMENTS))
def test_aligned_constructors_at_the_edge(value: int,
                                          ctype_alignment: tuple[type[Any], int]) -> None:
    ctype, alignment = ctype_alignment
    is_aligned = value % alignment == 0
    tried = AlignedGuestAddress.try_new(ctype, GuestAddress(value))
    assert (tried is not None) is is_aligned
    assert AlignedGuestAddress.align_down(ctype, GuestAddress(value)).raw_value() == \
        value - value % alignment
    up = -(-value // alignment) * alignment
    if up <= TOP:
        assert AlignedGuestAddress.align_up(ctype, GuestAddress(value)).raw_value() == up
    else:
        with pytest.raises(AddressOverflow):
            AlignedGuestAddress.align_up(ctype, GuestAddress(value))


def test_aligned_address_refuses_out_of_range_and_non_addresses() -> None:
    with pytest.raises(AddressOutOfRange):
        AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(-4))
    with pytest.raises(AddressOutOfRange):
        AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(LIMIT))
    with pytest.raises(TypeError):
        AlignedGuestAddress.new(ctypes.c_uint32, 4.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("constructor", ["new", "try_new", "align_up", "align_down"])
def test_aligned_constructors_refuse_a_plain_int(constructor: str) -> None:
    """Addresses are not ints anywhere in the API: a bare 0x1000 is refused, the same
    value as a GuestAddress accepted (the control)."""
    make = getattr(AlignedGuestAddress, constructor)
    with pytest.raises(TypeError, match="must be a GuestAddress, not int"):
        make(ctypes.c_uint32, 0x1000)
    assert make(ctypes.c_uint32, GuestAddress(0x1000)).raw_value() == 0x1000


def test_aligned_address_arithmetic_keeps_the_alignment_or_refuses() -> None:
    base = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(0x1000))
    kept = base + 8
    assert isinstance(kept, AlignedGuestAddress)
    assert kept.raw_value() == 0x1008
    with pytest.raises(MisalignedAddress) as raised:
        _ = base + 2  # type: ignore[vm-memory-misaligned]
    assert (raised.value.address, raised.value.alignment) == (0x1002, 4)
    with pytest.raises(MisalignedAddress):
        _ = base - 1  # type: ignore[vm-memory-misaligned]
    assert base.addr + 2 == GuestAddress(0x1002)  # a plain address, on purpose
    back = base - 4
    assert isinstance(back, AlignedGuestAddress)
    assert back.raw_value() == 0xFFC
    assert base.offset(3).raw_value() == 0x100C
    assert base.offset(-1).raw_value() == 0xFFC


def test_aligned_address_arithmetic_at_the_edge() -> None:
    last = AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(LIMIT - 8))
    with pytest.raises(AddressOverflow):
        last.offset(1)
    with pytest.raises(AddressOverflow):
        _ = last + 8
    first = AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(0))
    with pytest.raises(AddressOverflow):
        first.offset(-1)
    with pytest.raises(AddressOverflow):
        _ = first - 8
    assert last.offset(0) == last


def test_aligned_address_value_semantics() -> None:
    a = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(0x2000))
    assert a == AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(0x2000))
    # the type is part of it
    assert a != AlignedGuestAddress.new(ctypes.c_int32, GuestAddress(0x2000))
    assert a != GuestAddress(0x2000)
    assert len({a, AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(0x2000))}) == 1
    for name in ("_value", "_type"):
        with pytest.raises(AttributeError):
            setattr(a, name, 0)
    clone = pickle.loads(pickle.dumps(a))
    assert clone == a
    assert clone.type is ctypes.c_uint32
    assert clone.alignment == 4


ENDIAN_NAMES: Final = ("Le16", "Le32", "Le64", "LeI16", "LeI32", "LeI64",
                       "Be16", "Be32", "Be64", "BeI16", "BeI32", "BeI64")


@pytest.mark.parametrize("name", ENDIAN_NAMES)
def test_an_aligned_address_of_each_explicit_endian_type_pickles(name: str) -> None:
    """ctypes names a byte-swapped type after its native one (`c_uint`), a name that
    does not lead back to it: pickle refused `AlignedGuestAddress[Be32]` on
    little-endian hosts (and `[Le32]` on big-endian ones, found on s390x). Each type
    round-trips, and where it is not the native type itself it carries its own name."""
    ctype = getattr(endian, name)
    address = AlignedGuestAddress.new(ctype, GuestAddress(0x40))
    clone = pickle.loads(pickle.dumps(address))
    assert clone == address and clone.type is ctype
    native = getattr(ctypes, ("c_int" if "I" in name else "c_uint") + name[-2:])
    if ctype is native:  # the host's own order: ctypes' type itself
        assert repr(clone) == f"AlignedGuestAddress[{native.__name__}](0x40)"
    else:
        assert repr(clone) == f"AlignedGuestAddress[{name}](0x40)"
        assert f"{ctype.__module__}.{ctype.__qualname__}" == f"vm_memory.endian.{name}"


@pytest.mark.parametrize("address", [8, 8.0, MemoryRegionAddress(8), None])
def test_an_aligned_address_is_made_from_a_guest_address_only(address: Any) -> None:
    """Like every address parameter of the API: anything but a GuestAddress is a typed
    refusal (a GuestMemoryError that is also a TypeError), carrying what was given."""
    with pytest.raises(InvalidArgumentType) as refused:
        AlignedGuestAddress.new(ctypes.c_uint64, address)
    assert refused.value.got == type(address).__name__
    assert AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(8)).raw_value() == 8
