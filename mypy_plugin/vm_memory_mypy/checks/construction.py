"""vm-memory-aligned-construction: AlignedGuestAddress is built only by its checked
constructors (`new`, `try_new`, `align_up`, `align_down`), whatever the spelling of a
direct call: the class, subscripted, an alias, `__new__`, `object.__new__(...)`."""

from __future__ import annotations

from typing import Final

from mypy.nodes import ARG_STAR, ARG_STAR2
from mypy.plugin import FunctionContext, FunctionSigContext, MethodContext
from mypy.types import AnyType, FunctionLike, Instance, Type, TypeOfAny, get_proper_type

from vm_memory_mypy.errorcodes import ALIGNED_CONSTRUCTION
from vm_memory_mypy.names import ALIGNED_ADDRESS
from vm_memory_mypy.state import MethodHook, State
from vm_memory_mypy.typeutil import class_of, inside_library

DIRECT: Final = ("AlignedGuestAddress cannot be constructed directly; use "
                 "AlignedGuestAddress.new(T, address) (or try_new, align_up, align_down)")
THROUGH_NEW: Final = ("AlignedGuestAddress cannot be constructed with __new__; use "
                      "AlignedGuestAddress.new(T, address)")


def accept_anything(ctx: FunctionSigContext) -> FunctionLike:
    """AlignedGuestAddress(...) with any arguments: only this check's error is reported."""
    signature = ctx.default_signature
    any_type = AnyType(TypeOfAny.special_form)
    returned = get_proper_type(signature.ret_type)
    if isinstance(returned, Instance):
        returned = returned.copy_modified(args=[any_type] * len(returned.args))  # pyright: ignore[reportUnknownMemberType]
    return signature.copy_modified(arg_types=[any_type, any_type],  # pyright: ignore[reportUnknownMemberType]
                                   arg_kinds=[ARG_STAR, ARG_STAR2], arg_names=[None, None],
                                   ret_type=returned, variables=[])


def direct_construction(ctx: FunctionContext) -> Type:
    if not inside_library(ctx.api):
        ctx.api.fail(DIRECT, ctx.context, code=ALIGNED_CONSTRUCTION)
    return ctx.default_return_type


def object_new(state: State, ctx: MethodContext) -> Type:
    """`AlignedGuestAddress.__new__(...)` and `object.__new__(AlignedGuestAddress)`."""
    if ctx.arg_types and ctx.arg_types[0]:
        info = class_of(ctx.arg_types[0][0])
        if info is None or info.fullname != ALIGNED_ADDRESS:
            return ctx.default_return_type
    if not inside_library(ctx.api):
        ctx.api.fail(THROUGH_NEW, ctx.context, code=ALIGNED_CONSTRUCTION)
    return ctx.default_return_type


METHOD_HOOKS: Final[dict[tuple[str, str], MethodHook]] = {
    ("builtins.object", "__new__"): object_new,
    (ALIGNED_ADDRESS, "__new__"): object_new,
}
