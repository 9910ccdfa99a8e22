"""Guest physical and region-relative addresses: immutable 64-bit values.

Like the standard library's `ipaddress` types, addresses are values with checked
constructors, not `int` subclasses: an address can never be used as a plain offset by
accident, and every arithmetic method states what happens at the 2**64 edge.
"""
# pyright: reportPrivateUsage=false

from __future__ import annotations

from operator import index
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self

from vm_memory.errors import (
    AddressOutOfRange,
    AddressOverflow,
    InvalidAlignment,
    InvalidArgumentType,
)
from vm_memory.implementation import compiled

ADDRESS_SPACE_SIZE: Final = 1 << 64
"""Number of addresses in the 64-bit space; every address is below this."""

_MASK: Final = ADDRESS_SPACE_SIZE - 1


def as_int(value: object, what: str) -> int:
    """`value` as an exact `int`, converted once with `operator.index` (so an int subclass
    or a NumPy integer cannot lie later through its own operators); bools and
    non-integers are refused with `InvalidArgumentType`. Callers use the result."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise InvalidArgumentType(what, "an int", value)
    try:
        return index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgumentType(what, "an int", value) from None


def check_u64(value: object, what: str = "address") -> int:
    """Return `value` as an exact int in [0, 2**64), or raise a typed error saying why not.

    Callers must use the returned int, never `value` itself.
    """
    number = value if type(value) is int else as_int(value, what)
    if 0 <= number < ADDRESS_SPACE_SIZE:
        return number
    raise AddressOutOfRange(number, what)


def check_power_of_two(power: object) -> int:
    """`power` as an int if it is a power of two (an alignment), else `InvalidAlignment`."""
    number = check_u64(power, "alignment")
    if number == 0 or number & (number - 1):
        raise InvalidAlignment(number)
    return number


class _Address64:
    """Shared behaviour of the 64-bit address types (comparison only within one type)."""

    # Each subclass keeps its value in a slot of its own name, so code that reads the
    # slot of one address type directly (GuestMemory's hot paths) refuses the other.
    __slots__ = ()
    _VALUE_SLOT: ClassVar[str]

    def __init__(self, value: int) -> None:
        if type(value) is not int or not 0 <= value <= _MASK:
            value = check_u64(value)
        object.__setattr__(self, self._VALUE_SLOT, value)

    @classmethod
    def _unchecked(cls, value: int) -> Self:
        address = object.__new__(cls)
        object.__setattr__(address, cls._VALUE_SLOT, value)
        return address

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.raw_value(),))

    def raw_value(self) -> int:
        """The address as an int."""
        value: int = getattr(self, self._VALUE_SLOT)
        return value

    def mask(self, mask: int) -> int:
        """The address bits selected by `mask`."""
        return self.raw_value() & check_u64(mask, "mask")

    # Arithmetic. Offsets are unsigned 64-bit values, as in the Rust crate.

    def checked_add(self, offset: int) -> Self | None:
        """`self + offset`, or None if it passes 2**64 - 1."""
        result = self.raw_value() + check_u64(offset, "offset")
        return self._unchecked(result) if result <= _MASK else None

    def checked_sub(self, offset: int) -> Self | None:
        """`self - offset`, or None if it goes below 0."""
        result = self.raw_value() - check_u64(offset, "offset")
        return self._unchecked(result) if result >= 0 else None

    def overflowing_add(self, offset: int) -> tuple[Self, bool]:
        """`self + offset` wrapped to 64 bits, and whether it wrapped."""
        result = self.raw_value() + check_u64(offset, "offset")
        return self._unchecked(result & _MASK), result > _MASK

    def overflowing_sub(self, offset: int) -> tuple[Self, bool]:
        """`self - offset` wrapped to 64 bits, and whether it wrapped."""
        result = self.raw_value() - check_u64(offset, "offset")
        return self._unchecked(result & _MASK), result < 0

    def wrapping_add(self, offset: int) -> Self:
        """`self + offset` modulo 2**64."""
        return self._unchecked((self.raw_value() + check_u64(offset, "offset")) & _MASK)

    def wrapping_sub(self, offset: int) -> Self:
        """`self - offset` modulo 2**64."""
        return self._unchecked((self.raw_value() - check_u64(offset, "offset")) & _MASK)

    def unchecked_add(self, offset: int) -> Self:
        """`self + offset`, raising `AddressOverflow` past 2**64 - 1."""
        offset = check_u64(offset, "offset")
        result = self.raw_value() + offset
        if result > _MASK:
            raise AddressOverflow(self.raw_value(), "+", offset)
        return self._unchecked(result)

    def unchecked_sub(self, offset: int) -> Self:
        """`self - offset`, raising `AddressOverflow` below 0."""
        offset = check_u64(offset, "offset")
        result = self.raw_value() - offset
        if result < 0:
            raise AddressOverflow(self.raw_value(), "-", offset)
        return self._unchecked(result)

    def __add__(self, offset: int) -> Self:
        return self.unchecked_add(offset)

    def __sub__(self, offset: int) -> Self:
        return self.unchecked_sub(offset)

    def offset_from(self, base: Self) -> int:
        """The distance `self - base`; raises `AddressOverflow` if `base` is above."""
        if type(base) is not type(self):
            raise InvalidArgumentType("offset_from's base", f"a {type(self).__name__}", base)
        if base.raw_value() > self.raw_value():
            raise AddressOverflow(self.raw_value(), "-", base.raw_value())
        return self.raw_value() - base.raw_value()

    def checked_align_up(self, alignment: int) -> Self | None:
        """The next multiple of `alignment` (a power of two) at or above, or None."""
        alignment = check_power_of_two(alignment)
        result = (self.raw_value() + alignment - 1) & ~(alignment - 1)
        return self._unchecked(result) if result <= _MASK else None

    def align_up(self, alignment: int) -> Self:
        """The next multiple of `alignment` at or above; raises `AddressOverflow`."""
        aligned = self.checked_align_up(alignment)
        if aligned is None:
            raise AddressOverflow(self.raw_value(), "align_up", alignment)
        return aligned

    def align_down(self, alignment: int) -> Self:
        """The multiple of `alignment` (a power of two) at or below."""
        return self._unchecked(self.raw_value() & ~(check_power_of_two(alignment) - 1))

    def is_aligned(self, alignment: int) -> bool:
        """Whether the address is a multiple of `alignment` (a power of two)."""
        return self.raw_value() & (check_power_of_two(alignment) - 1) == 0

    # Value semantics: comparison and hashing within one address type only.

    def __eq__(self, other: object) -> bool:
        if type(other) is type(self):
            return self.raw_value() == other.raw_value()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.raw_value())

    def __lt__(self, other: Self) -> bool:
        if type(other) is type(self):
            return self.raw_value() < other.raw_value()
        return NotImplemented

    def __le__(self, other: Self) -> bool:
        if type(other) is type(self):
            return self.raw_value() <= other.raw_value()
        return NotImplemented

    def __gt__(self, other: Self) -> bool:
        if type(other) is type(self):
            return self.raw_value() > other.raw_value()
        return NotImplemented

    def __ge__(self, other: Self) -> bool:
        if type(other) is type(self):
            return self.raw_value() >= other.raw_value()
        return NotImplemented

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.raw_value():#x})"

    def __format__(self, spec: str) -> str:
        return format(self.raw_value(), spec) if spec else repr(self)


class _PureGuestAddressBase:
    """Nothing: on the pure path GuestAddress keeps its value in its own slot."""

    __slots__ = ()


if TYPE_CHECKING or compiled is None:
    _GuestAddressBase = _PureGuestAddressBase
    _GUEST_ADDRESS_SLOTS: tuple[str, ...] = ("_guest_value",)
else:  # the value lives in the compiled base (GuestAddressCore), which C reads directly
    _GuestAddressBase = compiled.GuestAddressCore
    _GUEST_ADDRESS_SLOTS = ()


class GuestAddress(_GuestAddressBase, _Address64):
    """A guest physical address."""

    __slots__ = _GUEST_ADDRESS_SLOTS
    _VALUE_SLOT = "_guest_value"
    _guest_value: int

    def __init__(self, value: int) -> None:
        if type(value) is not int or not 0 <= value <= _MASK:
            value = check_u64(value)
        _set_guest_value(self, value)

    def raw_value(self) -> int:
        """The address as an int."""
        return self._guest_value

    @classmethod
    def _unchecked(cls, value: int) -> Self:
        address = _new_object(cls)
        _set_guest_value(address, value)
        return address

    def __add__(self, offset: int) -> Self:
        if type(offset) is not int or not 0 <= offset <= _MASK \
                or self._guest_value + offset > _MASK:
            return self.unchecked_add(offset)  # the checks, and their errors
        address = _new_object(type(self))
        _set_guest_value(address, self._guest_value + offset)
        return address

    def __sub__(self, offset: int) -> Self:
        if type(offset) is not int or not 0 <= offset <= self._guest_value:
            return self.unchecked_sub(offset)  # the checks, and their errors
        address = _new_object(type(self))
        _set_guest_value(address, self._guest_value - offset)
        return address


_new_object = object.__new__
if compiled is None:  # the slot's own setter: cheaper than object.__setattr__
    _set_guest_value = GuestAddress._guest_value.__set__  # type: ignore[attr-defined]
else:
    # The compiled base checks and stores the value in __new__ and answers raw_value,
    # `+` and `-` itself (the pure methods below stay as its fallbacks for refusals).
    del GuestAddress.__init__, GuestAddress.raw_value, GuestAddress._unchecked
    del GuestAddress.__add__, GuestAddress.__sub__
    compiled.register("guest_address", GuestAddress)
    compiled.register("address.add", _Address64.__add__)
    compiled.register("address.sub", _Address64.__sub__)
    compiled.register("check_u64", check_u64)


class MemoryRegionAddress(_Address64):
    """An offset inside one region, as a 64-bit address."""

    __slots__ = ("_region_offset",)
    _VALUE_SLOT = "_region_offset"
    _region_offset: int

    def raw_value(self) -> int:
        """The offset as an int."""
        return self._region_offset
