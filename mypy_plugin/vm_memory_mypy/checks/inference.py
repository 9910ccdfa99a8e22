"""Precise types: `read_obj`, `read_obj_unaligned` and `VolatileRef.load` give the value
type of T (`int`, `float`, `bool`, `bytes`) or the Structure itself. (The atomic
operations' results come from `checks.atomics`.)"""

from __future__ import annotations

from typing import Final

from mypy.plugin import MethodContext
from mypy.types import Type

from vm_memory_mypy.names import GUEST_MEMORY, VOLATILE_REF
from vm_memory_mypy.state import MethodHook, State
from vm_memory_mypy.typeutil import (
    aligned_type_argument,
    class_of,
    first_argument_class,
    value_type,
)


def read_obj(state: State, ctx: MethodContext) -> Type:
    info = aligned_type_argument(ctx)
    return (value_type(info) if info is not None else None) or ctx.default_return_type


def read_obj_unaligned(state: State, ctx: MethodContext) -> Type:
    info = class_of(ctx.arg_types[1][0]) if len(ctx.arg_types) > 1 and ctx.arg_types[1] \
        else None
    return (value_type(info) if info is not None else None) or ctx.default_return_type


def load(state: State, ctx: MethodContext) -> Type:
    info = first_argument_class(ctx.type, VOLATILE_REF)
    return (value_type(info) if info is not None else None) or ctx.default_return_type


METHOD_HOOKS: Final[dict[tuple[str, str], MethodHook]] = {
    (GUEST_MEMORY, "read_obj"): read_obj,
    (GUEST_MEMORY, "read_obj_unaligned"): read_obj_unaligned,
    (VOLATILE_REF, "load"): load,
}
