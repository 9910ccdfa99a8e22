"""AlignedGuestAddress[T]: a guest address proven aligned for the ByteValued type T.

It can only be made by checked constructors (`new`, `try_new`, `align_up`,
`align_down`), so holding one is the proof: `read_obj`/`write_obj` and the atomic
operations take it and need no further alignment check of the guest address. The
alignment is the type's natural alignment: its size for scalars (what an atomic access
needs), the ctypes alignment for aggregates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, cast, final

from vm_memory.implementation import compiled
from vm_memory.address import ADDRESS_SPACE_SIZE, GuestAddress, as_int, check_u64
from vm_memory.atomic_access import is_atomic_access
from vm_memory.byte_valued import TypeLayout, layout_of
from vm_memory.errors import (
    AddressOverflow,
    AlignedAddressConstruction,
    MisalignedAddress,
    NotByteValued,
)

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)


class _ConstructionToken:
    """Only the checked constructors hold one; it makes direct calls a static error."""


def required_alignment(layout: TypeLayout) -> int:
    """The alignment an `AlignedGuestAddress` of this type proves."""
    size = layout.size
    if layout.is_scalar and size & (size - 1) == 0:
        return size
    return layout.alignment


def _as_address_value(address: GuestAddress) -> int:
    """The value of a GuestAddress; anything else (a plain int too) is refused: addresses
    are not ints anywhere in the API."""
    if type(address) is GuestAddress:
        return address.raw_value()
    raise TypeError(f"an address must be a GuestAddress, not {type(address).__name__} "
                    "(wrap a constant as GuestAddress(value))")


class _PureAlignedBase:
    """Nothing: on the pure path AlignedGuestAddress keeps its fields in its own slots."""

    __slots__ = ()


if TYPE_CHECKING or compiled is None:
    _AlignedBase = _PureAlignedBase
    _ALIGNED_SLOTS: tuple[str, ...] = ("_alignment", "_guest_value", "_layout", "_type")
else:  # the fields live in the compiled base (AlignedCore), which C reads directly
    _AlignedBase = compiled.AlignedCore
    _ALIGNED_SLOTS = ()


@final
class AlignedGuestAddress(_AlignedBase, Generic[_T_co]):
    """A guest address aligned for `T`; build it with `AlignedGuestAddress.new(T, address)`."""

    __slots__ = _ALIGNED_SLOTS
    _guest_value: int
    _type: type[Any]
    _alignment: int
    _layout: TypeLayout

    if TYPE_CHECKING:
        def __init__(self, token: _ConstructionToken, /) -> None: ...
    else:
        def __new__(cls, *args: object, **kwargs: object) -> NoReturn:
            raise AlignedAddressConstruction()

    @classmethod
    def _make(cls, ctype: type[_T], value: int, layout: TypeLayout,
              alignment: int) -> AlignedGuestAddress[_T]:
        address = cast("AlignedGuestAddress[_T]", object.__new__(AlignedGuestAddress))
        setattr_ = object.__setattr__
        setattr_(address, "_guest_value", value)
        setattr_(address, "_type", ctype)
        setattr_(address, "_alignment", alignment)
        setattr_(address, "_layout", layout)
        return address

    @classmethod
    def new(cls, ctype: type[_T], address: GuestAddress) -> AlignedGuestAddress[_T]:
        """`address` as aligned for `ctype`; raises `MisalignedAddress` if it is not."""
        value = _as_address_value(address)
        layout = layout_of(ctype)
        alignment = required_alignment(layout)
        if value & (alignment - 1):
            raise MisalignedAddress(value, alignment, layout.name)
        return cls._make(ctype, value, layout, alignment)

    @classmethod
    def try_new(cls, ctype: type[_T],
                address: GuestAddress) -> AlignedGuestAddress[_T] | None:
        """`address` as aligned for `ctype`, or None if it is not aligned."""
        value = _as_address_value(address)
        layout = layout_of(ctype)
        alignment = required_alignment(layout)
        if value & (alignment - 1):
            return None
        return cls._make(ctype, value, layout, alignment)

    @classmethod
    def align_up(cls, ctype: type[_T], address: GuestAddress) -> AlignedGuestAddress[_T]:
        """The first address at or above `address` aligned for `ctype`."""
        value = _as_address_value(address)
        layout = layout_of(ctype)
        alignment = required_alignment(layout)
        aligned = (value + alignment - 1) & ~(alignment - 1)
        if aligned >= ADDRESS_SPACE_SIZE:
            raise AddressOverflow(value, "align_up", alignment)
        return cls._make(ctype, aligned, layout, alignment)

    @classmethod
    def align_down(cls, ctype: type[_T],
                   address: GuestAddress) -> AlignedGuestAddress[_T]:
        """The last address at or below `address` aligned for `ctype`."""
        value = _as_address_value(address)
        layout = layout_of(ctype)
        alignment = required_alignment(layout)
        return cls._make(ctype, value & ~(alignment - 1), layout, alignment)

    @property
    def addr(self) -> GuestAddress:
        """The plain guest address."""
        return GuestAddress(self._guest_value)

    @property
    def type(self) -> type[_T_co]:
        """The type this address is aligned for."""
        return self._type

    @property
    def alignment(self) -> int:
        """The alignment proven, in bytes."""
        return self._alignment

    def raw_value(self) -> int:
        """The address as an int."""
        return self._guest_value

    def offset(self, elements: int) -> AlignedGuestAddress[_T_co]:
        """The address `elements` values of T further (negative: back); stays aligned."""
        if type(elements) is not int:
            elements = as_int(elements, "elements")  # converted once, then only the int
        value = self._guest_value + elements * self._layout.size
        if not 0 <= value < ADDRESS_SPACE_SIZE:
            raise AddressOverflow(self._guest_value, "+" if elements >= 0 else "-",
                                  abs(elements) * self._layout.size)
        return self._make(self._type, value, self._layout, self._alignment)

    def __add__(self, offset: int) -> AlignedGuestAddress[_T_co]:
        """The address `offset` bytes further, still aligned for T: an offset that is not
        a multiple of the alignment raises `MisalignedAddress` (for a plain address
        there, use `address.addr + offset`)."""
        offset = check_u64(offset, "offset")
        value = self._guest_value + offset
        if value >= ADDRESS_SPACE_SIZE:
            raise AddressOverflow(self._guest_value, "+", offset)
        if offset % self._alignment:
            raise MisalignedAddress(value, self._alignment, self._layout.name)
        return self._make(self._type, value, self._layout, self._alignment)

    def __sub__(self, offset: int) -> AlignedGuestAddress[_T_co]:
        """The address `offset` bytes back, still aligned for T (else `MisalignedAddress`)."""
        offset = check_u64(offset, "offset")
        value = self._guest_value - offset
        if value < 0:
            raise AddressOverflow(self._guest_value, "-", offset)
        if offset % self._alignment:
            raise MisalignedAddress(value, self._alignment, self._layout.name)
        return self._make(self._type, value, self._layout, self._alignment)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("AlignedGuestAddress is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is AlignedGuestAddress:
            return (self._guest_value, self._type) == (other._guest_value, other._type)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._guest_value, self._type))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (self._type, self._guest_value))

    def __repr__(self) -> str:
        return f"AlignedGuestAddress[{self._type.__name__}]({self._guest_value:#x})"


def _restore(ctype: type[_T], value: int) -> AlignedGuestAddress[_T]:
    return AlignedGuestAddress.new(ctype, GuestAddress(value))


def _describe(ctype: object) -> Any:
    """What the compiled path needs to know of `ctype` (a `_fastpath.TypeInfo`), or None
    if it is not ByteValued (then C leaves every call with it to the general paths)."""
    assert compiled is not None
    try:
        layout = layout_of(ctype)
    except NotByteValued:
        return None
    if layout.is_bool:
        kind = compiled.KIND_BOOL
    elif layout.is_integer:
        kind = compiled.KIND_SIGNED if layout.minimum < 0 else compiled.KIND_UNSIGNED
    elif layout.is_scalar and layout.struct_unpack is not None:
        kind = compiled.KIND_FLOAT
    else:
        kind = compiled.KIND_OTHER
    return compiled.TypeInfo(layout.ctype, layout, required_alignment(layout), layout.size,
                             kind, not layout.is_native_byte_order, is_atomic_access(ctype))


if compiled is not None:
    # The compiled base answers these itself; the pure methods stay as its fallbacks for
    # everything it does not take (other argument types, and every refusal).
    compiled.register("aligned.new", AlignedGuestAddress.new.__func__)
    compiled.register("aligned.try_new", AlignedGuestAddress.try_new.__func__)
    compiled.register("aligned.offset", AlignedGuestAddress.offset)
    compiled.register("aligned.add", AlignedGuestAddress.__add__)
    compiled.register("aligned.sub", AlignedGuestAddress.__sub__)
    compiled.register("aligned.make", AlignedGuestAddress._make.__func__)
    for _name in ("new", "try_new", "offset", "__add__", "__sub__", "raw_value", "_make"):
        delattr(AlignedGuestAddress, _name)
    compiled.register("aligned_address", AlignedGuestAddress)
    compiled.register("describe", _describe)
