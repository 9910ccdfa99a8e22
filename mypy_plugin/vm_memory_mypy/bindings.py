"""Where a name of the module being checked is bound: what "assigned once" means.

A module's name is bound at its top level, in a block at any depth there (`if`, `for`,
`try`, `with`), by any function declaring it `global`, and by imports, loops, `with`,
walrus, `del`, `def` and `class`. A class attribute is bound in its class's body, and
by an attribute store (`Cfg.SLOT = 8`) anywhere in the module. A constant is folded only
where its one binding is a plain assignment (`constants.single_definition`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mypy.nodes import (
    AssignmentExpr,
    AssignmentStmt,
    Block,
    ClassDef,
    Decorator,
    DelStmt,
    Expression,
    ExpressionStmt,
    ForStmt,
    FuncDef,
    GlobalDecl,
    IfStmt,
    Import,
    ImportFrom,
    ListExpr,
    MatchStmt,
    MemberExpr,
    MypyFile,
    NameExpr,
    OperatorAssignmentStmt,
    OverloadedFuncDef,
    StarExpr,
    Statement,
    TryStmt,
    TupleExpr,
    WhileStmt,
    WithStmt,
)


@dataclass
class Bindings:
    """The bindings of one scope (a module's or a class body's): each name's values, None
    for a binding that is not a plain assignment; and, over every body inside it, the
    attribute names stored and the names declared `global`.

    A walk by hand: mypy's visitor classes are compiled traits, which a plugin cannot
    subclass. An assignment expression is seen where it is a statement's or a
    condition's whole expression, not deeper inside one."""

    names: dict[str, list[Expression | None]] = field(
        default_factory=dict[str, list[Expression | None]])
    stored_attributes: set[str] = field(default_factory=set[str])
    declared_global: set[str] = field(default_factory=set[str])

    def values(self, name: str) -> list[Expression | None]:
        return self.names.get(name, [])

    def walk(self, statements: list[Statement], nested: int = 0) -> None:
        """Record `statements`, `nested` function or class bodies deep."""
        for statement in statements:
            self._statement(statement, nested)

    def _bind(self, name: str, value: Expression | None, nested: int) -> None:
        if not nested:
            self.names.setdefault(name, []).append(value)

    def _target(self, target: Expression, value: Expression | None, nested: int) -> None:
        if isinstance(target, NameExpr):
            self._bind(target.name, value, nested)
        elif isinstance(target, TupleExpr | ListExpr):
            for item in target.items:
                self._target(item, None, nested)
        elif isinstance(target, StarExpr):
            self._target(target.expr, None, nested)
        elif isinstance(target, MemberExpr):
            self.stored_attributes.add(target.name)

    def _expression(self, expression: Expression | None, nested: int) -> None:
        if isinstance(expression, AssignmentExpr):
            self._target(expression.target, None, nested)
            self._expression(expression.value, nested)

    def _blocks(self, blocks: list[Block | None], nested: int) -> None:
        for block in blocks:
            if block is not None:
                self.walk(block.body, nested)

    def _statement(self, statement: Statement, nested: int) -> None:
        if isinstance(statement, AssignmentStmt):
            for lvalue in statement.lvalues:
                self._target(lvalue, statement.rvalue, nested)
            self._expression(statement.rvalue, nested)
        elif isinstance(statement, OperatorAssignmentStmt):
            self._target(statement.lvalue, None, nested)
        elif isinstance(statement, ExpressionStmt):
            self._expression(statement.expr, nested)
        elif isinstance(statement, IfStmt):
            for condition in statement.expr:
                self._expression(condition, nested)
            self._blocks([*statement.body, statement.else_body], nested)
        elif isinstance(statement, WhileStmt):
            self._expression(statement.expr, nested)
            self._blocks([statement.body, statement.else_body], nested)
        elif isinstance(statement, ForStmt):
            self._target(statement.index, None, nested)
            self._blocks([statement.body, statement.else_body], nested)
        elif isinstance(statement, WithStmt):
            for target in statement.target:
                if target is not None:
                    self._target(target, None, nested)
            self._blocks([statement.body], nested)
        elif isinstance(statement, TryStmt):
            for name in statement.vars:
                if name is not None:
                    self._target(name, None, nested)
            self._blocks([statement.body, *statement.handlers, statement.else_body,
                          statement.finally_body], nested)
        elif isinstance(statement, MatchStmt):
            self._blocks(list(statement.bodies), nested)
        elif isinstance(statement, DelStmt):
            self._target(statement.expr, None, nested)
        elif isinstance(statement, GlobalDecl):
            self.declared_global.update(statement.names)
        elif isinstance(statement, Import):
            for module, alias in statement.ids:
                self._bind(alias or module.partition(".")[0], None, nested)
        elif isinstance(statement, ImportFrom):
            for imported, alias in statement.names:
                self._bind(alias or imported, None, nested)
        elif isinstance(statement, Decorator):
            self._statement(statement.func, nested)
        elif isinstance(statement, FuncDef):
            self._bind(statement.name, None, nested)
            self.walk(statement.body.body, nested + 1)
        elif isinstance(statement, OverloadedFuncDef):
            self._bind(statement.name, None, nested)
            for item in statement.items:
                self._statement(item, nested + 1)
        elif isinstance(statement, ClassDef):
            self._bind(statement.name, None, nested)
            self.walk(statement.defs.body, nested + 1)
        elif isinstance(statement, Block):
            self.walk(statement.body, nested)


@dataclass
class _Cache:
    """The bindings of the module last asked about (checks of a module run together)."""

    tree: MypyFile | None = None
    module: Bindings = field(default_factory=Bindings)
    classes: dict[int, tuple[Block, Bindings]] = field(
        default_factory=dict[int, tuple[Block, Bindings]])


_cache = _Cache()


def module_bindings(tree: MypyFile) -> Bindings:
    """The bindings of `tree`'s own scope, with its attribute stores and `global`s."""
    if _cache.tree is not tree:
        bindings = Bindings()
        bindings.walk(tree.defs)
        _cache.tree, _cache.module, _cache.classes = tree, bindings, {}
    return _cache.module


def class_bindings(tree: MypyFile, body: Block) -> Bindings:
    """The bindings of a class body of `tree` (its methods are scopes of their own)."""
    module_bindings(tree)
    known = _cache.classes.get(id(body))
    if known is None or known[0] is not body:
        bindings = Bindings()
        bindings.walk(body.body)
        known = _cache.classes[id(body)] = (body, bindings)
    return known[1]
