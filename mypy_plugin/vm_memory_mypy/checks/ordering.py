"""vm-memory-ordering: a memory ordering known statically (a literal member, a `Final`
name, a Literal-typed variable) that the operation cannot use: a load cannot release, a
store cannot acquire, a compare-exchange failure is a load (`names` holds the rules)."""

from __future__ import annotations

from typing import Any, Final

from mypy.nodes import Expression, MemberExpr, RefExpr, Var
from mypy.plugin import MethodContext
from mypy.types import Instance, LiteralType, Type, get_proper_type

from vm_memory_mypy.constants import single_definition
from vm_memory_mypy.errorcodes import ORDERING
from vm_memory_mypy.names import (
    GUEST_MEMORY,
    GUEST_MEMORY_ATOMICS,
    ORDERING_ENUM,
    VOLATILE_REF,
    VOLATILE_REF_ATOMICS,
)
from vm_memory_mypy.state import MethodHook, State


def ordering_literal(typ: Type) -> str | None:
    """The member name of a statically known `Ordering` value."""
    proper = get_proper_type(typ)
    if isinstance(proper, Instance) and proper.last_known_value is not None:
        proper = proper.last_known_value
    if isinstance(proper, LiteralType) and proper.fallback.type.fullname == ORDERING_ENUM and \
            isinstance(proper.value, str):
        return proper.value
    return None


def ordering_of(expression: Expression, typ: Type, api: Any) -> str | None:
    """The member name of an `Ordering` known statically: by its type, or a name of the
    module being checked assigned once to a member (`Acquire = Ordering.ACQUIRE`)."""
    name = ordering_literal(typ)
    if name is None and isinstance(expression, RefExpr) and isinstance(expression.node, Var):
        definition = single_definition(expression.node, api)
        if isinstance(definition, MemberExpr) and isinstance(definition.expr, RefExpr) and \
                definition.expr.fullname == ORDERING_ENUM:
            return definition.name
    return name


def orderings_of(method: str, rules: dict[str, frozenset[str]]) -> MethodHook:
    def hook(state: State, ctx: MethodContext) -> Type:
        for parameter, allowed in rules.items():
            if parameter not in ctx.callee_arg_names:
                continue
            index = ctx.callee_arg_names.index(parameter)
            if index >= len(ctx.args) or not ctx.args[index]:
                continue
            name = ordering_of(ctx.args[index][0], ctx.arg_types[index][0], ctx.api)
            if name is not None and name not in allowed:
                what = method if parameter == "order" else f"{method} {parameter}"
                ctx.api.fail(
                    f"Ordering.{name} is not valid for {what}; use one of "
                    + ", ".join(f"Ordering.{o}" for o in sorted(allowed)),
                    ctx.args[index][0], code=ORDERING)
        return ctx.default_return_type
    return hook


METHOD_HOOKS: Final[dict[tuple[str, str], MethodHook]] = {
    **{(GUEST_MEMORY, method): orderings_of(method, rules)
       for method, rules in GUEST_MEMORY_ATOMICS.items()},
    **{(VOLATILE_REF, method): orderings_of(method, rules)
       for method, rules in VOLATILE_REF_ATOMICS.items()},
}
