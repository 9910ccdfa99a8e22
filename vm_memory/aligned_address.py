"""AlignedGuestAddress[T]: a guest address proven aligned for the ByteValued type T.

It can only be made by checked constructors (`new`, `try_new`, `align_up`,
`align_down`), so holding one is the proof: `read_obj`/`write_obj` and the atomic
operations take it and need no further alignment check of the guest address. The
alignment is the type's natural alignment: its size for scalars (what an atomic access
needs), the ctypes alignment for aggregates.
"""
# pyright: reportPrivateUsage=false

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, final

from vm_memory.address import ADDRESS_SPACE_SIZE, GuestAddress, as_int, check_u64
from vm_memory.atomic_access import is_atomic_access
from vm_memory.byte_valued import TypeLayout, cached_for_type, layout_of
from vm_memory.errors import (
    AddressOverflow,
    AlignedAddressConstruction,
    InvalidArgumentType,
    MisalignedAddress,
    NotByteValued,
)
from vm_memory.implementation import compiled

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
    raise InvalidArgumentType("an address", "a GuestAddress", address)


class AlignmentInfo:
    """What an address of one ByteValued type carries: the type, its layout, and the
    alignment an address of it proves (one object per type, shared by its addresses).

    Immutable from outside: the access paths trust it. `atomics` is the atomic fast
    paths' entry per operation (by its index in the operation table), None until the
    general path has first run an atomic on the type on host memory; only
    `set_fast_atomics` (for the atomic general path) sets it.
    """

    __slots__ = ("alignment", "atomics", "ctype", "layout")
    ctype: type[Any]
    layout: TypeLayout
    alignment: int
    atomics: Any
    """A tuple of entries, or None: the fast paths index it and take the TypeError."""

    def __init__(self, ctype: type[Any], layout: TypeLayout, alignment: int) -> None:
        fix = object.__setattr__
        fix(self, "ctype", ctype)
        fix(self, "layout", layout)
        fix(self, "alignment", alignment)
        fix(self, "atomics", None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("AlignmentInfo is immutable: the access paths trust it")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("AlignmentInfo is immutable: the access paths trust it")


def set_fast_atomics(info: AlignmentInfo, entries: tuple[Any, ...] | None) -> None:
    """Give `info`'s type its atomic fast-path entries (None: take them back)."""
    object.__setattr__(info, "atomics", entries)


_INFOS: dict[type[Any], AlignmentInfo] = {}


def alignment_info(ctype: object) -> AlignmentInfo:
    """`ctype`'s `AlignmentInfo` (made once); raises `NotByteValued`."""
    cached = cached_for_type(_INFOS, ctype)
    if cached is not None:
        return cached
    layout = layout_of(ctype)
    info = _INFOS[layout.ctype] = AlignmentInfo(layout.ctype, layout,
                                                required_alignment(layout))
    return info


class _PureAlignedBase:
    """Nothing: on the pure path AlignedGuestAddress keeps its fields in its own slots."""

    __slots__ = ()


if TYPE_CHECKING or compiled is None:
    _AlignedBase = _PureAlignedBase
    _ALIGNED_SLOTS: tuple[str, ...] = ("_guest_value", "_info")
else:  # the fields live in the compiled base (AlignedCore), which C reads directly
    _AlignedBase = compiled.AlignedCore
    _ALIGNED_SLOTS = ()


@final
class AlignedGuestAddress(_AlignedBase, Generic[_T_co]):
    """A guest address aligned for `T`; build it with `AlignedGuestAddress.new(T, address)`."""

    __slots__ = _ALIGNED_SLOTS
    _guest_value: int
    _info: AlignmentInfo
    """Two slots on the pure path (an address is made often); the compiled base keeps the
    same in C. `_type`, `_layout` and `_alignment` read it."""

    if TYPE_CHECKING:
        def __init__(self, token: _ConstructionToken, /) -> None: ...
    else:
        def __new__(cls, *args: object, **kwargs: object) -> NoReturn:
            raise AlignedAddressConstruction()

    @property
    def _type(self) -> type[Any]:
        return self._info.ctype

    @property
    def _layout(self) -> TypeLayout:
        return self._info.layout

    @property
    def _alignment(self) -> int:
        return self._info.alignment

    @classmethod
    def _make(cls, ctype: type[_T], value: int, layout: TypeLayout,
              alignment: int) -> AlignedGuestAddress[_T]:
        made: AlignedGuestAddress[_T] = _construct(value, alignment_info(ctype))
        return made

    @classmethod
    def new(cls, ctype: type[_T], address: GuestAddress) -> AlignedGuestAddress[_T]:
        """`address` as aligned for `ctype`; raises `MisalignedAddress` if it is not."""
        if type(address) is not GuestAddress:
            _as_address_value(address)  # refuses it
        value = address._guest_value
        # `cached_for_type`'s rule, inlined: the call would cost this hot path a tenth.
        try:
            info = _INFOS[ctype]
        except Exception:  # absent, unhashable, a hash that raises: refused there
            info = alignment_info(ctype)
        if info.ctype is not ctype:  # a type claiming to equal a cached one: refused there
            info = alignment_info(ctype)
        if value & (info.alignment - 1):
            raise MisalignedAddress(value, info.alignment, info.layout.name)
        made: AlignedGuestAddress[_T] = _construct(value, info)
        return made

    @classmethod
    def try_new(cls, ctype: type[_T],
                address: GuestAddress) -> AlignedGuestAddress[_T] | None:
        """`address` as aligned for `ctype`, or None if it is not aligned."""
        value = _as_address_value(address)
        info = alignment_info(ctype)
        if value & (info.alignment - 1):
            return None
        made: AlignedGuestAddress[_T] = _construct(value, info)
        return made

    @classmethod
    def align_up(cls, ctype: type[_T], address: GuestAddress) -> AlignedGuestAddress[_T]:
        """The first address at or above `address` aligned for `ctype`."""
        value = _as_address_value(address)
        info = alignment_info(ctype)
        aligned = (value + info.alignment - 1) & ~(info.alignment - 1)
        if aligned >= ADDRESS_SPACE_SIZE:
            raise AddressOverflow(value, "align_up", info.alignment)
        made: AlignedGuestAddress[_T] = _construct(aligned, info)
        return made

    @classmethod
    def align_down(cls, ctype: type[_T],
                   address: GuestAddress) -> AlignedGuestAddress[_T]:
        """The last address at or below `address` aligned for `ctype`."""
        value = _as_address_value(address)
        info = alignment_info(ctype)
        made: AlignedGuestAddress[_T] = _construct(value & ~(info.alignment - 1), info)
        return made

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
        info = self._info
        value = self._guest_value + elements * info.layout.size
        if not 0 <= value < ADDRESS_SPACE_SIZE:
            raise AddressOverflow(self._guest_value, "+" if elements >= 0 else "-",
                                  abs(elements) * info.layout.size)
        made: AlignedGuestAddress[_T_co] = _construct(value, info)
        return made

    def __add__(self, offset: int) -> AlignedGuestAddress[_T_co]:
        """The address `offset` bytes further, still aligned for T: an offset that is not
        a multiple of the alignment raises `MisalignedAddress` (for a plain address
        there, use `address.addr + offset`)."""
        if type(offset) is not int or not 0 <= offset < ADDRESS_SPACE_SIZE:
            offset = check_u64(offset, "offset")
        info = self._info
        value = self._guest_value + offset
        if value < ADDRESS_SPACE_SIZE and not offset & (info.alignment - 1):
            made: AlignedGuestAddress[_T_co] = _construct(value, info)
            return made
        return self._moved(value, offset, "+")

    def __sub__(self, offset: int) -> AlignedGuestAddress[_T_co]:
        """The address `offset` bytes back, still aligned for T (else `MisalignedAddress`)."""
        if type(offset) is not int or not 0 <= offset < ADDRESS_SPACE_SIZE:
            offset = check_u64(offset, "offset")
        return self._moved(self._guest_value - offset, offset, "-")

    def _moved(self, value: int, offset: int, operator: str) -> AlignedGuestAddress[_T_co]:
        """This address moved to `value` by `offset` bytes, if that keeps it aligned."""
        info = self._info
        if not 0 <= value < ADDRESS_SPACE_SIZE:
            raise AddressOverflow(self._guest_value, operator, offset)
        if offset % info.alignment:
            raise MisalignedAddress(value, info.alignment, info.layout.name)
        made: AlignedGuestAddress[_T_co] = _construct(value, info)
        return made

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


_construct: Callable[[int, AlignmentInfo], Any]
"""Every constructor's last step, from a checked value: the pure slots' own setters (much
cheaper than object.__setattr__), or the compiled base's constructor."""

if compiled is None:
    _new_object: Callable[[type[Any]], Any] = object.__new__
    _set_value = AlignedGuestAddress._guest_value.__set__  # type: ignore[attr-defined]
    _set_info = AlignedGuestAddress._info.__set__  # type: ignore[attr-defined]

    def _pure_construct(value: int, info: AlignmentInfo) -> Any:
        made = _new_object(AlignedGuestAddress)
        _set_value(made, value)
        _set_info(made, info)
        return made

    _construct = _pure_construct
else:
    def _describe(ctype: object) -> Any:
        """What the compiled path needs to know of `ctype` (a `_fastpath.TypeInfo`), or
        None if it is not ByteValued (then C leaves every call with it to the general
        paths)."""
        assert compiled is not None
        try:
            info = alignment_info(ctype)
        except NotByteValued:
            return None
        layout = info.layout
        if layout.is_bool:
            kind = compiled.KIND_BOOL
        elif layout.is_integer:
            kind = compiled.KIND_SIGNED if layout.minimum < 0 else compiled.KIND_UNSIGNED
        elif layout.is_scalar and layout.struct_unpack is not None:
            kind = compiled.KIND_FLOAT
        else:
            kind = compiled.KIND_OTHER
        return compiled.TypeInfo(info, layout.ctype, layout, info.alignment, layout.size,
                                 kind, not layout.is_native_byte_order,
                                 is_atomic_access(ctype))

    _make_compiled = AlignedGuestAddress._make  # the compiled base's, once ours is gone

    def _compiled_construct(value: int, info: AlignmentInfo) -> Any:
        return _make_compiled(info.ctype, value, info.layout, info.alignment)

    # The compiled base answers these itself; the pure methods stay as its fallbacks for
    # everything it does not take (other argument types, and every refusal).
    _methods = vars(AlignedGuestAddress)
    compiled.register("aligned.new", _methods["new"].__func__)
    compiled.register("aligned.try_new", _methods["try_new"].__func__)
    compiled.register("aligned.offset", _methods["offset"])
    compiled.register("aligned.add", _methods["__add__"])
    compiled.register("aligned.sub", _methods["__sub__"])
    compiled.register("aligned.make", _methods["_make"].__func__)
    for _name in ("new", "try_new", "offset", "__add__", "__sub__", "raw_value", "_make",
                  "_type", "_layout", "_alignment"):
        delattr(AlignedGuestAddress, _name)
    _make_compiled = AlignedGuestAddress._make
    _construct = _compiled_construct
    compiled.register("aligned_address", AlignedGuestAddress)
    compiled.register("describe", _describe)
