"""Integer constants known statically, as real device code spells them.

mypy's own folding sees literals and `Final` names of the current module only. Here:

- a `Final` int of any module (mypy stores its value with the name, in the cache too);
- a member of an IntEnum/IntFlag of any module (`enum_constants` records the members'
  values in the class's metadata, which the cache keeps);
- in the module being checked, any name or class attribute bound exactly once, by a
  plain assignment (`bindings`), `Final` or not, and `GuestAddress(<constant>)` (so a
  `Final` GuestAddress plus an offset folds).

Other modules' syntax trees are not read: a module loaded from the incremental cache has
none, and a verdict must not depend on whether a dependency was cached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from mypy.nodes import (
    VAR_NO_INFO,
    AssignmentStmt,
    CallExpr,
    Expression,
    IntExpr,
    MemberExpr,
    NameExpr,
    OpExpr,
    RefExpr,
    TypeInfo,
    UnaryExpr,
    Var,
)
from mypy.plugin import ClassDefContext
from mypy.typeops import try_getting_int_literals_from_type
from mypy.types import Type

from vm_memory_mypy.bindings import class_bindings, module_bindings
from vm_memory_mypy.names import GUEST_ADDRESS, METADATA_KEY
from vm_memory_mypy.typeutil import current_tree, module_of

OPERATORS: Final[dict[str, Callable[[int, int], int]]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "//": lambda a, b: a // b, "%": lambda a, b: a % b, "<<": lambda a, b: a << b,
    ">>": lambda a, b: a >> b, "|": lambda a, b: a | b, "&": lambda a, b: a & b,
    "^": lambda a, b: a ^ b,
}
DEPTH: Final = 16
"""How many names deep a constant may be defined in terms of others."""
MAX_BITS: Final = 256
"""The widest constant folded: guest addresses are 64 bits, and a wider operand or result
(`1 << (1 << 64)`, say) is left unknown rather than computed (it could exhaust memory)."""


def constant_of(expression: Expression, typ: Type | None, api: Any) -> int | None:
    """The value of an int (or GuestAddress) expression known statically, else None."""
    if typ is not None:
        literals = try_getting_int_literals_from_type(typ)
        if literals and len(literals) == 1:
            return literals[0] if literals[0].bit_length() <= MAX_BITS else None
    return evaluate(expression, api, DEPTH)


def evaluate(expression: Expression, api: Any, depth: int) -> int | None:
    if depth <= 0:
        return None
    if isinstance(expression, IntExpr):
        return expression.value if expression.value.bit_length() <= MAX_BITS else None
    if isinstance(expression, UnaryExpr) and expression.op in ("-", "~", "+"):
        value = evaluate(expression.expr, api, depth)
        if value is None:
            return None
        return {"-": -value, "~": ~value, "+": value}[expression.op]
    if isinstance(expression, OpExpr) and expression.op in OPERATORS:
        left = evaluate(expression.left, api, depth)
        right = evaluate(expression.right, api, depth) if left is not None else None
        if left is None or right is None or not _small(left, right, expression.op):
            return None
        try:
            value = OPERATORS[expression.op](left, right)
        except (ZeroDivisionError, ValueError):
            return None
        return value if value.bit_length() <= MAX_BITS else None
    if isinstance(expression, CallExpr) and isinstance(expression.callee, RefExpr) and \
            expression.callee.fullname == GUEST_ADDRESS and len(expression.args) == 1:
        return evaluate(expression.args[0], api, depth)
    if isinstance(expression, RefExpr):
        var = expression.node if isinstance(expression.node, Var) else _class_member(expression)
        if var is not None:
            return _name_value(var, api, depth - 1)
    return None


def _small(left: int, right: int, operator: str) -> bool:
    """Whether `left operator right` can be computed without building a huge int."""
    if left.bit_length() > MAX_BITS or right.bit_length() > MAX_BITS:
        return False
    return operator != "<<" or right <= MAX_BITS


def _class_member(expression: RefExpr) -> Var | None:
    """The Var of `Class.NAME` (mypy binds no node to a class attribute reference)."""
    if not isinstance(expression, MemberExpr) or not isinstance(expression.expr, RefExpr):
        return None
    owner = expression.expr.node
    if not isinstance(owner, TypeInfo):
        return None
    member = owner.get(expression.name)
    return member.node if member is not None and isinstance(member.node, Var) else None


def _name_value(var: Var, api: Any, depth: int) -> int | None:
    value = var.final_value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if var.info is not VAR_NO_INFO:
        recorded = var.info.metadata.get(METADATA_KEY, {}).get("constants", {})
        if var.name in recorded:
            return int(recorded[var.name])
    definition = single_definition(var, api)
    return None if definition is None else evaluate(definition, api, depth)


def single_definition(var: Var, api: Any) -> Expression | None:
    """The right-hand side of the one assignment that binds `var` in the module being
    checked (a module's name, or a class attribute there), or None if anything else may
    bind it too (`bindings`: another assignment at any depth, a `global` declaration, an
    attribute store, a loop or `with` target...)."""
    current = module_of(api)
    tree = current_tree(api)
    if tree is None:
        return None
    module = module_bindings(tree)
    if var.info is not VAR_NO_INFO:
        if var.info.module_name != current or var.name in module.stored_attributes:
            return None
        values = class_bindings(tree, var.info.defn.defs).values(var.name)
    else:
        if var.fullname.rpartition(".")[0] != current or var.name in module.declared_global:
            return None
        values = module.values(var.name)
    return values[0] if len(values) == 1 else None


def enum_constants(ctx: ClassDefContext) -> None:
    """Record the int values of an enum's members in its metadata (kept by the cache)."""
    constants: dict[str, int] = {}
    for statement in ctx.cls.defs.body:
        if isinstance(statement, AssignmentStmt) and len(statement.lvalues) == 1 and \
                isinstance(statement.lvalues[0], NameExpr):
            value = evaluate(statement.rvalue, ctx.api, DEPTH)
            if value is not None:
                constants[statement.lvalues[0].name] = value
    if constants:
        ctx.cls.info.metadata.setdefault(METADATA_KEY, {})["constants"] = constants
