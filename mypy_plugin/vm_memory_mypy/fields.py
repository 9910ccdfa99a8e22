"""Structure and Union fields: what `_fields_` holds, read while mypy analyzes the class.

For each ctypes aggregate the plugin records in the class's metadata (which the
incremental cache keeps) the fields' types, the first field that is not plain data, and
`_pack_`; it gives the class an attribute of each field's value type (`Le64` -> int,
`c_bool` -> bool, `c_char * 8` -> bytes, a nested Structure -> itself, an array ->
`ctypes.Array[element]`), and refuses an annotation the class declares that disagrees.

`_fields_` may be written indirectly: a name bound to a list, `[...] + [...]`, field
types through aliases (`VoidP = c_void_p`, `P = POINTER(c_uint8)`), or assigned after the
class (`Cls._fields_ = ...`). Names defined in the module being analyzed are followed to
their one definition; a name from another module is judged by its type. What cannot be
told is recorded as unknown, and the checks say so with a note instead of accepting.
"""

from __future__ import annotations

from typing import Any, Final

from mypy.nodes import (
    MDEF,
    AssignmentStmt,
    CallExpr,
    Expression,
    IntExpr,
    ListExpr,
    MemberExpr,
    NameExpr,
    OpExpr,
    RefExpr,
    StrExpr,
    SymbolTableNode,
    TupleExpr,
    TypeAlias,
    TypeInfo,
    Var,
)
from mypy.plugin import ClassDefContext
from mypy.subtypes import is_same_type
from mypy.types import Instance, TupleType, Type, get_proper_type

from vm_memory_mypy.ctypes_model import NOT_BYTE_VALUED, NOT_BYTE_VALUED_BASES, POINTER_FACTORIES
from vm_memory_mypy.errorcodes import FIELD_TYPE
from vm_memory_mypy.names import METADATA_KEY
from vm_memory_mypy.typeutil import ARRAY, class_of, current_tree, value_type

DEPTH: Final = 8
"""How many names deep `_fields_` or a field type may be defined through others."""

Record = dict[str, Any]


def record_of(info: TypeInfo) -> Record | None:
    record = info.metadata.get(METADATA_KEY)
    return record if record and "fields" in record else None


def not_byte_valued_reason(info: TypeInfo) -> str | None:
    """Why `info` is not ByteValued, if its class or a base (inherited `_fields_`) says so."""
    for base in info.mro:
        if base.fullname in NOT_BYTE_VALUED:
            return NOT_BYTE_VALUED[base.fullname]
        if base.fullname in NOT_BYTE_VALUED_BASES:
            return NOT_BYTE_VALUED_BASES[base.fullname]
        record = record_of(base)
        if record and record.get("bad"):
            return str(record["bad"])
    return None


def unknown_reason(info: TypeInfo) -> str | None:
    """Why the fields of `info` (or of a base) cannot be told statically, if they cannot."""
    for base in info.mro:
        record = record_of(base)
        if record and record.get("unknown"):
            return str(record["unknown"])
    return None


def field_types(info: TypeInfo) -> list[str] | None:
    """The fullnames of the field types of `info`, its bases' first (C layout), or None."""
    types: list[str] = []
    for base in reversed(info.mro):
        record = record_of(base)
        if record is None:
            continue
        if record["fields"] is None:
            return None
        types.extend(record["fields"])
    return types or None


def pack_of(info: TypeInfo) -> int | None:
    for base in info.mro:
        record = record_of(base)
        if record and record.get("pack"):
            return int(record["pack"])
    return None


class _Reader:
    """Reads one class's `_fields_` in the semantic analyzer."""

    def __init__(self, ctx: ClassDefContext) -> None:
        self.ctx = ctx
        self.api = ctx.api
        self.record: Record = {"fields": [], "bad": None, "pack": None, "unknown": None}
        self.attributes: dict[str, Type] = {}

    # -- names -----------------------------------------------------------------------

    def resolve(self, expression: Expression) -> Any:
        """The node a name expression refers to (looked up if not bound yet)."""
        if isinstance(expression, RefExpr) and expression.node is not None:
            return expression.node
        dotted = _dotted(expression)
        if dotted is None:
            return None
        symbol = self.api.lookup_qualified(dotted, self.ctx.cls, suppress_errors=True)
        return None if symbol is None else symbol.node

    def definition(self, var: Var) -> Expression | None:
        """The right-hand side of the one module-level assignment of `var`, in the module
        being analyzed (other modules' trees are not read: see `constants`)."""
        tree = current_tree(self.api)
        if tree is None or var.fullname.rpartition(".")[0] != tree.fullname:
            return None
        found = [statement.rvalue for statement in tree.defs
                 if isinstance(statement, AssignmentStmt) and any(
                     isinstance(target, NameExpr) and target.name == var.name
                     for target in statement.lvalues)]
        return found[0] if len(found) == 1 else None

    # -- _fields_ --------------------------------------------------------------------

    def entries(self, expression: Expression, depth: int) -> list[Expression] | None:
        """The entries of a `_fields_` value: a list or tuple, a concatenation, or a name
        bound to one of those in this module."""
        if depth <= 0:
            return None
        if isinstance(expression, ListExpr | TupleExpr):
            return list(expression.items)
        if isinstance(expression, OpExpr) and expression.op == "+":
            left = self.entries(expression.left, depth - 1)
            right = self.entries(expression.right, depth - 1)
            return None if left is None or right is None else left + right
        node = self.resolve(expression)
        if isinstance(node, Var):
            rvalue = self.definition(node)
            return None if rvalue is None else self.entries(rvalue, depth - 1)
        return None

    def read_fields(self, expression: Expression, described: str) -> None:
        entries = self.entries(expression, DEPTH)
        if entries is None:
            if self.read_typed_fields(expression):
                return
            self.record["fields"] = None
            self.record["unknown"] = f"its _fields_ ({described}) cannot be read statically"
            return
        for entry in entries:
            if not isinstance(entry, TupleExpr | ListExpr) or len(entry.items) < 2:
                self.record["fields"] = None
                self.record["unknown"] = "an entry of its _fields_ is not a literal tuple"
                continue
            name = entry.items[0].value if isinstance(entry.items[0], StrExpr) else None
            kind, detail, typ = self.classify(entry.items[1], DEPTH)
            if kind == "bad" and self.record["bad"] is None:
                self.record["bad"] = f"field {name or '?'!r} is {detail}"
            elif kind == "unknown" and self.record["unknown"] is None:
                self.record["unknown"] = f"the type of field {name or '?'!r} cannot be told"
            if self.record["fields"] is not None:
                if kind == "type":
                    self.record["fields"].append(detail)
                else:
                    self.record["fields"] = None
            if name is not None and typ is not None and len(entry.items) == 2:
                self.attributes[name] = typ
            elif name is not None and typ is not None:  # a bit field reads back an int
                self.attributes[name] = self.api.named_type("builtins.int")

    def read_typed_fields(self, expression: Expression) -> bool:
        """`_fields_` bound to another module's name whose type is a tuple of
        `(str, type[T])` pairs: the field types are in the type."""
        node = self.resolve(expression)
        typ = get_proper_type(node.type) if isinstance(node, Var) else None
        if not isinstance(typ, TupleType):
            return False
        classes: list[TypeInfo] = []
        for item in map(get_proper_type, typ.items):
            if not isinstance(item, TupleType) or len(item.items) < 2:
                return False
            info = class_of(item.items[1])
            if info is None:
                return False
            classes.append(info)
        for info in classes:
            kind, detail, _ = self.classify_class(info)
            if kind == "bad" and self.record["bad"] is None:
                self.record["bad"] = f"a field is {detail}"
            if self.record["fields"] is not None:
                if kind == "type":
                    self.record["fields"].append(detail)
                else:
                    self.record["fields"] = None
        return True

    def classify(self, expression: Expression, depth: int) -> tuple[str, str, Type | None]:
        """("type", element fullname, value type) for a plain-data field type, ("bad",
        why, None) for one that is not plain data, ("unknown", "", None) otherwise."""
        if depth <= 0:
            return "unknown", "", None
        if isinstance(expression, OpExpr) and expression.op == "*":
            kind, detail, element = self.classify(expression.left, depth - 1)
            if kind != "type" or element is None:
                return kind, detail, None
            return kind, detail, self.array_value(expression.left, element, depth - 1)
        if isinstance(expression, CallExpr) and isinstance(expression.callee, RefExpr):
            callee = expression.callee.fullname or _dotted(expression.callee) or ""
            node = self.resolve(expression.callee)
            if isinstance(node, TypeInfo | Var) and node.fullname in POINTER_FACTORIES:
                callee = node.fullname
            if callee in POINTER_FACTORIES or f"ctypes.{callee}" in POINTER_FACTORIES:
                factory = callee.rpartition(".")[2]
                return "bad", f"{factory}(...), an address in this process", None
            return "unknown", "", None
        node = self.resolve(expression)
        if isinstance(node, TypeAlias):
            info = class_of(node.target)
            return self.classify_class(info) if info is not None else ("unknown", "", None)
        if isinstance(node, TypeInfo):
            return self.classify_class(node)
        if isinstance(node, Var):
            rvalue = self.definition(node)
            if rvalue is not None:
                return self.classify(rvalue, depth - 1)
            if node.type is not None:  # another module's name: its inferred type
                info = class_of(node.type)
                if info is not None:
                    return self.classify_class(info)
        return "unknown", "", None

    def classify_class(self, info: TypeInfo) -> tuple[str, str, Type | None]:
        reason = not_byte_valued_reason(info)
        if reason is not None:
            return "bad", f"{info.name} ({reason})", None
        return "type", info.fullname, value_type(info)

    def array_value(self, element: Expression, element_value: Type, depth: int) -> Type:
        """A field `T * n` reads back as bytes for `c_char`, str for `c_wchar`, else as
        `ctypes.Array[T]`."""
        node = self.resolve(element)
        if isinstance(node, TypeAlias):
            node = class_of(node.target)
        info = node if isinstance(node, TypeInfo) else None
        if info is not None and info.fullname == "ctypes.c_char":
            return self.api.named_type("builtins.bytes")
        if info is not None and info.fullname == "ctypes.c_wchar":
            return self.api.named_type("builtins.str")
        item: Type = Instance(info, []) if info is not None else element_value
        return self.api.named_type(ARRAY, [item])

    # -- the class -------------------------------------------------------------------

    def read_class(self) -> None:
        body_fields: Expression | None = None
        for statement in self.ctx.cls.defs.body:
            if not isinstance(statement, AssignmentStmt) or len(statement.lvalues) != 1 or \
                    not isinstance(statement.lvalues[0], NameExpr):
                continue
            name = statement.lvalues[0].name
            if name == "_pack_" and isinstance(statement.rvalue, IntExpr):
                self.record["pack"] = statement.rvalue.value
            elif name == "_fields_":
                body_fields = statement.rvalue
        if body_fields is not None:
            self.read_fields(body_fields, "in the class body")
            return
        later = self.assigned_later()
        if later is not None:
            self.read_fields(later, "assigned after the class")
        elif not any(record_of(base) for base in self.ctx.cls.info.mro[1:]):
            self.record["fields"] = []
        else:
            del self.record["fields"]  # a subclass adding no fields: its bases' count

    def assigned_later(self) -> Expression | None:
        """`Cls._fields_ = ...` at the top level of this module, after the class."""
        tree = current_tree(self.api)
        if tree is None:
            return None
        for statement in tree.defs:
            if isinstance(statement, AssignmentStmt) and len(statement.lvalues) == 1:
                target = statement.lvalues[0]
                if isinstance(target, MemberExpr) and target.name == "_fields_" and \
                        isinstance(target.expr, NameExpr) and \
                        target.expr.name == self.ctx.cls.name:
                    return statement.rvalue
        return None

    def declare_attributes(self) -> None:
        info = self.ctx.cls.info
        for name, typ in self.attributes.items():
            existing = info.names.get(name)
            if existing is not None and not existing.plugin_generated:
                declared = existing.type
                if declared is not None and not is_same_type(declared, typ):
                    self.api.fail(
                        f'Field "{name}" of {info.name} reads back as "{typ}" by its '
                        f'_fields_ type, but is declared "{declared}"',
                        existing.node if existing.node is not None else self.ctx.cls,
                        code=FIELD_TYPE)
                continue
            var = Var(name, typ)
            var.info = info
            var._fullname = f"{info.fullname}.{name}"  # pyright: ignore[reportPrivateUsage]
            info.names[name] = SymbolTableNode(MDEF, var, plugin_generated=True)


def _dotted(expression: Expression) -> str | None:
    if isinstance(expression, NameExpr):
        return expression.name
    if isinstance(expression, MemberExpr):
        left = _dotted(expression.expr)
        return None if left is None else f"{left}.{expression.name}"
    return None


def record_fields(ctx: ClassDefContext) -> None:
    """Base-class hook of ctypes aggregates: record the fields, declare their types."""
    reader = _Reader(ctx)
    reader.read_class()
    metadata = ctx.cls.info.metadata.setdefault(METADATA_KEY, {})
    metadata.pop("fields", None)
    metadata.update(reader.record)
    reader.declare_attributes()
    _declare_fields_as_ctypes_does(ctx)


def _declare_fields_as_ctypes_does(ctx: ClassDefContext) -> None:
    """Give a class's own `_fields_` the type typeshed declares on Structure/Union (as if
    annotated) instead of its literal's tuple type, so a subclass may add fields without
    an incompatible-assignment error."""
    info = ctx.cls.info
    own = info.names.get("_fields_")
    if own is None or not isinstance(own.node, Var) or not own.node.is_inferred:
        return
    declared_type = None
    for base in info.mro[1:]:
        declared = base.names.get("_fields_")
        if declared is not None and isinstance(declared.node, Var) and \
                not declared.node.is_inferred and declared.node.type is not None:
            declared_type = declared.node.type
            break
    if declared_type is None:
        return
    for statement in ctx.cls.defs.body:
        if isinstance(statement, AssignmentStmt) and statement.type is None and \
                len(statement.lvalues) == 1 and isinstance(statement.lvalues[0], NameExpr) \
                and statement.lvalues[0].name == "_fields_":
            statement.type = declared_type
            statement.lvalues[0].is_inferred_def = False
    own.node.type = declared_type
    own.node.is_inferred = False
    own.node.is_classvar = True
