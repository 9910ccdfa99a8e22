"""vm-memory-misaligned: an address known statically (see `constants`) that is
misaligned for T on the target, given to `AlignedGuestAddress.new`/`try_new` or added to
an `AlignedGuestAddress[T]` (`+`/`-` keep the proof, so they refuse an offset that is not
a multiple of the alignment). Scalars need their size; a Structure its C alignment,
which depends on the target's ABI (an 8-byte field is 4-aligned on i686) and `_pack_`;
an array its element's (`c_uint32 * 3`: 4)."""

from __future__ import annotations

from typing import Final

from mypy.nodes import Expression
from mypy.plugin import MethodContext
from mypy.types import Type

from vm_memory_mypy.constants import constant_of
from vm_memory_mypy.errorcodes import MISALIGNED
from vm_memory_mypy.names import ALIGNED_ADDRESS, ALIGNED_VALUE_CONSTRUCTORS
from vm_memory_mypy.state import MethodHook, State
from vm_memory_mypy.typeutil import first_argument, type_name


def report(state: State, ctx: MethodContext, typ: Type, value: int,
           context: Expression, what: str) -> None:
    """`typ` names T: a class, or an array (`c_uint32 * 3`), aligned as its element."""
    alignment = state.type_alignment(typ)
    if alignment is not None and value % alignment:
        ctx.api.fail(
            f"{what} {value:#x} is not aligned for {type_name(typ)} on "
            f"{state.target.describe()}: it needs a multiple of {alignment}; use "
            "AlignedGuestAddress.align_up/align_down or fix the constant",
            context, code=MISALIGNED)


def checked_constructor(state: State, ctx: MethodContext) -> Type:
    """`AlignedGuestAddress.new(T, address)` and `try_new`."""
    if ctx.arg_types and ctx.arg_types[0] and len(ctx.args) > 1 and ctx.args[1]:
        value = constant_of(ctx.args[1][0], ctx.arg_types[1][0], ctx.api)
        if value is not None:
            report(state, ctx, ctx.arg_types[0][0], value, ctx.args[1][0], "Address")
    return ctx.default_return_type


def arithmetic(state: State, ctx: MethodContext) -> Type:
    """`AlignedGuestAddress[T] + offset` (and `-`): the offset must keep the alignment."""
    typ = first_argument(ctx.type, ALIGNED_ADDRESS)
    if typ is not None and ctx.args and ctx.args[0]:
        value = constant_of(ctx.args[0][0], ctx.arg_types[0][0], ctx.api)
        if value is not None:
            report(state, ctx, typ, value, ctx.args[0][0], "Offset")
    return ctx.default_return_type


METHOD_HOOKS: Final[dict[tuple[str, str], MethodHook]] = {
    **{(ALIGNED_ADDRESS, name): checked_constructor for name in ALIGNED_VALUE_CONSTRUCTORS},
    (ALIGNED_ADDRESS, "__add__"): arithmetic,
    (ALIGNED_ADDRESS, "__sub__"): arithmetic,
}
