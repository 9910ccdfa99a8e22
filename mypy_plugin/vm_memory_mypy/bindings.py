"""Where a name of the module being checked is bound: what "assigned once" means.

A module's name is bound at its top level, in a block at any depth there (`if`, `for`,
`try`, `with`), by any function declaring it `global`, and by imports, loops, `with`,
walrus, `del`, `def` and `class`. A class attribute is bound in its class's body, and
by an attribute store (`Cfg.SLOT = 8`) anywhere in the module. A constant is folded only
where its one binding is a plain assignment (`constants.single_definition`).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

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

    source_counts: dict[str, int] | None = None
    """A module's bindings by name as its source counts them (`_source_bindings`), where
    the walk alone could miss some."""
    star_import: bool = False

    def values(self, name: str) -> list[Expression | None]:
        """The values bound to `name`; a None among them where another binding may be
        unseen (a star import, or the source counting other than one)."""
        if self.star_import or (self.source_counts is not None and
                                self.source_counts.get(name, 0) != 1):
            return [None]
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
            for item in [*statement.items, *([statement.impl] if statement.impl else [])]:
                self._statement(item, nested + 1)
        elif isinstance(statement, ClassDef):
            self._bind(statement.name, None, nested)
            self.walk(statement.defs.body, nested + 1)
        elif isinstance(statement, Block):
            self.walk(statement.body, nested)


_BEYOND_THE_WALK: Final = re.compile(rb":=|^[ \t]*match\b|import[ \t]+\*", re.MULTILINE)
"""What the hand walk does not follow: an assignment expression inside a larger one, a
`match` statement's captures, a star import. Where the source has any, its syntax tree
(Python's own `ast`) counts the module's bindings too."""


class _SourceBindings(ast.NodeVisitor):
    """Bindings of the module's own scope by name, counted over the whole source:
    assignment expressions anywhere (also in comprehensions), `match` captures, star
    imports (`star`), besides every other binding."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.star = False
        self._nested = 0       # function, lambda or class bodies entered
        self._targets_off = 0  # inside a comprehension's own targets

    def _bind(self, name: str) -> None:
        if not self._nested and not self._targets_off:
            self.counts[name] = self.counts.get(name, 0) + 1

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store | ast.Del):
            self._bind(node.id)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        targets_off, self._targets_off = self._targets_off, 0  # binds the enclosing scope
        self._bind(node.target.id)
        self._targets_off = targets_off
        self.visit(node.value)

    def _scope(self, node: ast.AST, name: str | None) -> None:
        if name is not None:
            self._bind(name)
        for field_name in ("decorator_list", "bases", "keywords", "returns"):
            for child in _as_list(getattr(node, field_name, None)):
                self.visit(child)
        arguments = getattr(node, "args", None)
        if isinstance(arguments, ast.arguments):
            for default in [*arguments.defaults, *arguments.kw_defaults]:
                if default is not None:
                    self.visit(default)
        self._nested += 1
        for child in _as_list(getattr(node, "body", None)):
            self.visit(child)
        self._nested -= 1

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scope(node, node.name)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._scope(node, node.name)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scope(node, node.name)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._scope(node, None)

    def visit_comprehension(self, node: ast.comprehension) -> None:
        self._targets_off += 1
        self.visit(node.target)
        self._targets_off -= 1
        self.visit(node.iter)
        for condition in node.ifs:
            self.visit(condition)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._bind(alias.asname or alias.name.partition(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name == "*":
                self.star = True
            else:
                self._bind(alias.asname or alias.name)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self._bind(node.name)
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name:
            self._bind(node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self._bind(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest:
            self._bind(node.rest)
        self.generic_visit(node)


def _as_list(value: object) -> list[ast.AST]:
    if isinstance(value, list):
        return [item for item in value if isinstance(item, ast.AST)]  # pyright: ignore[reportUnknownVariableType]
    return [value] if isinstance(value, ast.AST) else []


def _source_bindings(tree: MypyFile) -> _SourceBindings | None:
    """The source's own count of bindings, where it has what the walk does not follow;
    None where it has none (or cannot be read: the walk is then all there is)."""
    try:
        source = Path(tree.path).read_bytes()
    except OSError:
        return None
    if not _BEYOND_THE_WALK.search(source):
        return None
    try:
        parsed = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    counted = _SourceBindings()
    counted.visit(parsed)
    return counted


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
        counted = _source_bindings(tree)
        if counted is not None:
            bindings.source_counts = counted.counts
            bindings.star_import = counted.star
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
