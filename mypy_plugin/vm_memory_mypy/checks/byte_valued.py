"""vm-memory-byte-valued: a Structure or Union whose `_fields_` hold something that is
not plain data (a pointer, `c_char_p`, `c_void_p`, `py_object`, a nested aggregate that
does, also inherited), used where ByteValued is required. Where its fields cannot be
told statically, a note says so instead of accepting in silence."""

from __future__ import annotations

from typing import Final

from mypy.nodes import Expression, TypeInfo
from mypy.plugin import MethodContext
from mypy.types import Type

from vm_memory_mypy.errorcodes import BYTE_VALUED
from vm_memory_mypy.fields import not_byte_valued_reason, unknown_reason
from vm_memory_mypy.names import ALIGNED_ADDRESS, GUEST_MEMORY, VOLATILE_SLICE
from vm_memory_mypy.state import MethodHook, State
from vm_memory_mypy.typeutil import (
    aligned_argument_type,
    class_of,
    innermost_element,
    is_known_scalar,
    type_name,
)

PLAIN_DATA: Final = ("only plain-data fields (ctypes scalars, endian types, nested "
                     "Structures and arrays of them) can live in guest memory")


def check(info: TypeInfo, ctx: MethodContext, context: Expression,
          array: str | None = None) -> bool:
    """Report `info` if it is not ByteValued (or note that the plugin cannot tell);
    `array` names the array (of arrays) whose element type `info` is."""
    if is_known_scalar(info.fullname):  # an integer, float or endian scalar itself
        return True
    reason = not_byte_valued_reason(info)
    if reason is not None:
        if array is not None:
            reason = f"its element type is {info.name} ({reason})"
        ctx.api.fail(f"{array or info.name} is not ByteValued: {reason}; {PLAIN_DATA}",
                     context, code=BYTE_VALUED)
        return False
    unknown = unknown_reason(info)
    if unknown is not None:
        ctx.api.msg.note(f"{info.name}: {unknown}, so the plugin cannot check that it is "
                     "ByteValued (write _fields_ as a literal list in the class body)",
                     context, code=BYTE_VALUED)
    return True


def check_type(typ: Type, ctx: MethodContext, context: Expression) -> None:
    """`check` on the class `typ` names, or on the element type of an array."""
    element = innermost_element(typ)
    info = class_of(typ if element is None else element)
    if info is not None:
        check(info, ctx, context, None if element is None else type_name(typ))


def type_argument(position: int) -> MethodHook:
    """The check on the type passed as argument `position` (`ctype`)."""
    def hook(state: State, ctx: MethodContext) -> Type:
        if len(ctx.arg_types) > position and ctx.arg_types[position]:
            check_type(ctx.arg_types[position][0], ctx, ctx.args[position][0])
        return ctx.default_return_type
    return hook


def aligned_argument(state: State, ctx: MethodContext) -> Type:
    """The check on T of the AlignedGuestAddress[T] passed first (`read_obj`...)."""
    typ = aligned_argument_type(ctx)
    if typ is not None:
        check_type(typ, ctx, ctx.args[0][0])
    return ctx.default_return_type


METHOD_HOOKS: Final[dict[tuple[str, str], MethodHook]] = {
    (GUEST_MEMORY, "read_obj"): aligned_argument,
    (GUEST_MEMORY, "write_obj"): aligned_argument,
    (GUEST_MEMORY, "read_obj_unaligned"): type_argument(1),
    (GUEST_MEMORY, "write_obj_unaligned"): type_argument(1),
    (VOLATILE_SLICE, "get_ref"): type_argument(0),
    (VOLATILE_SLICE, "get_array_ref"): type_argument(0),
    **{(ALIGNED_ADDRESS, name): type_argument(0)
       for name in ("new", "try_new", "align_up", "align_down")},
}
