"""The mypy plugin of vm-memory: alignment, atomic width and orderings proven statically.

Enable it with `plugins = ["vm_memory_mypy.plugin"]` in the mypy configuration; set the
target in its own section (`[tool.vm_memory_mypy]` in pyproject.toml, `[vm_memory_mypy]`
in mypy.ini/setup.cfg): `target` (an architecture of `targets.ARCHITECTURES`), and
optionally `os` and `data_model`. Without a target it checks for the host.
"""

# mypy annotates its `copy_modified` methods with an alias pyright cannot resolve; the
# four calls below say so (`reportUnknownMemberType`).

from __future__ import annotations

import configparser
import hashlib
import json
import sys
import tomllib
from collections.abc import Callable
from typing import Any, Final

from mypy import errorcodes as codes
from mypy.constant_fold import constant_fold_expr
from mypy.errorcodes import ErrorCode
from mypy.maptype import map_instance_to_supertype
from mypy.nodes import (
    ARG_STAR,
    ARG_STAR2,
    AssignmentStmt,
    CallExpr,
    Expression,
    FuncItem,
    IntExpr,
    ListExpr,
    NameExpr,
    OpExpr,
    RefExpr,
    StrExpr,
    TupleExpr,
    TypeInfo,
    Var,
)
from mypy.options import Options
from mypy.plugin import (
    ClassDefContext,
    FunctionContext,
    FunctionSigContext,
    MethodContext,
    MethodSigContext,
    Plugin,
    ReportConfigContext,
)
from mypy.subtypes import is_subtype
from mypy.typeops import try_getting_int_literals_from_type
from mypy.types import (
    AnyType,
    CallableType,
    FunctionLike,
    Instance,
    LiteralType,
    Overloaded,
    TupleType,
    Type,
    TypeOfAny,
    TypeType,
    TypeVarId,
    TypeVarType,
    UnionType,
    get_proper_type,
)

from vm_memory_mypy.ctypes_model import (
    AGGREGATE_BASES,
    ATOMIC_TYPES,
    NOT_BYTE_VALUED,
    NOT_BYTE_VALUED_BASES,
    POINTER_FACTORIES,
    field_alignment,
    scalar_alignment,
    scalar_size,
)
from vm_memory_mypy.targets import Target, host_target, make_target

PLUGIN_VERSION: Final = "0.1.0"
__version__ = PLUGIN_VERSION
"""Completed with a digest of the configuration when the plugin loads (see `_configure`)."""


SECTION: Final = "vm_memory_mypy"
METADATA_KEY: Final = "vm_memory_mypy"
WIDENED_NAMESPACE: Final = "vm_memory_mypy.widened"

CATEGORY: Final = "vm-memory"
ALIGNED_CONSTRUCTION: Final = ErrorCode(
    "vm-memory-aligned-construction",
    "AlignedGuestAddress built without a checked constructor", CATEGORY)
MISALIGNED: Final = ErrorCode(
    "vm-memory-misaligned", "A constant address misaligned for its type", CATEGORY)
ATOMIC_TYPE: Final = ErrorCode(
    "vm-memory-atomic-type", "An atomic operation on a type that is not AtomicAccess",
    CATEGORY)
ATOMIC_WIDTH: Final = ErrorCode(
    "vm-memory-atomic-width", "An atomic operation wider than the target can do lock-free",
    CATEGORY)
ORDERING: Final = ErrorCode(
    "vm-memory-ordering", "A memory ordering invalid for the operation", CATEGORY)
BYTE_VALUED: Final = ErrorCode(
    "vm-memory-byte-valued", "A Structure or Union with a field that is not plain data",
    CATEGORY)

ALIGNED_ADDRESS: Final = "vm_memory.aligned_address.AlignedGuestAddress"
GUEST_ADDRESS: Final = "vm_memory.address.GuestAddress"
ORDERING_ENUM: Final = "vm_memory.ordering.Ordering"
GUEST_MEMORY: Final = "vm_memory.guest_memory.GuestMemory"
VOLATILE_REF: Final = "vm_memory.volatile.VolatileRef"
VOLATILE_SLICE: Final = "vm_memory.volatile.VolatileSlice"

LOADS: Final = frozenset({"RELAXED", "ACQUIRE", "SEQ_CST"})
STORES: Final = frozenset({"RELAXED", "RELEASE", "SEQ_CST"})
ANY_ORDER: Final = frozenset({"RELAXED", "ACQUIRE", "RELEASE", "ACQ_REL", "SEQ_CST"})

# Atomic methods of GuestMemory: (orderings allowed per ordering parameter, stores?).
ATOMIC_METHODS: Final = {
    "read_atomic": {"order": LOADS},
    "write_atomic": {"order": STORES},
    "swap": {"order": ANY_ORDER},
    "compare_exchange": {"success": ANY_ORDER, "failure": LOADS},
    "fetch_add": {"order": ANY_ORDER},
    "fetch_sub": {"order": ANY_ORDER},
    "fetch_and": {"order": ANY_ORDER},
    "fetch_or": {"order": ANY_ORDER},
    "fetch_xor": {"order": ANY_ORDER},
}
VOLATILE_REF_ATOMICS: Final = {
    "read_atomic": {"order": LOADS},
    "write_atomic": {"order": STORES},
    "swap": {"order": ANY_ORDER},
    "compare_exchange": {"success": ANY_ORDER, "failure": LOADS},
    "fetch_add": {"order": ANY_ORDER},
}
MEMORY_OBJECT_METHODS: Final = frozenset({"read_obj", "write_obj", "read_obj_unaligned",
                                          "write_obj_unaligned"})
VOLATILE_METHODS: Final = frozenset({"load", "get_ref", "get_array_ref"})
CHECKED_CONSTRUCTORS: Final = ("new", "try_new", "align_up", "align_down")
ALIGNED_VALUE_CONSTRUCTORS: Final = ("new", "try_new")
"""The constructors for which a misaligned constant is a bug (the others align it)."""


class VmMemoryPlugin(Plugin):
    """Checks the vm_memory API against the configured target."""

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self._owners: dict[str, tuple[str, str]] = {}
        self._widened_calls: set[int] = set()
        """Atomic calls whose signature was widened, so mypy no longer checks a c_bool
        address's values: `_atomic_result` does."""
        try:
            self.target, self.config = _configure(options)
        except ValueError as error:  # a configuration mistake, not a crash of mypy
            sys.stderr.write(f"{options.config_file}: [{SECTION}] {error}\n")
            raise SystemExit(2) from None

    def report_config_data(self, ctx: ReportConfigContext) -> dict[str, str]:
        """The target, stored with each module in mypy's cache: a module checked for
        another target is stale. (`__version__` carries a digest of the same data, which
        dmypy compares; mypy also drops the whole cache when that changes.)"""
        return self.config

    # -- hook selection ------------------------------------------------------------

    def get_function_signature_hook(
        self, fullname: str
    ) -> Callable[[FunctionSigContext], FunctionLike] | None:
        if fullname == ALIGNED_ADDRESS:
            return _accept_anything
        return None

    def get_function_hook(self, fullname: str) -> Callable[[FunctionContext], Type] | None:
        if fullname == ALIGNED_ADDRESS:
            return self._direct_construction
        return None

    def get_method_signature_hook(
        self, fullname: str
    ) -> Callable[[MethodSigContext], FunctionLike] | None:
        owner, method = self._owner_and_method(fullname)
        if owner == GUEST_MEMORY and method in ATOMIC_METHODS:
            return self._widen_atomic_signature
        return None

    def _owner_and_method(self, fullname: str) -> tuple[str, str]:
        """The vm_memory class a method hook name belongs to: mypy names hooks after the
        receiver's static class (`GuestMemoryMmap.read_atomic`), not the defining one.
        mypy asks for every method call of the program, so the answers are memoized."""
        known = self._owners.get(fullname)
        if known is None:
            known = self._owners[fullname] = self._find_owner(fullname)
        return known

    def _find_owner(self, fullname: str) -> tuple[str, str]:
        owner, _, method = fullname.rpartition(".")
        if not fullname.startswith("vm_memory") and \
                method not in ATOMIC_METHODS and method not in MEMORY_OBJECT_METHODS and \
                method not in VOLATILE_METHODS:
            return owner, method  # not one of the hooked names: no lookup needed
        if owner in (GUEST_MEMORY, VOLATILE_REF, VOLATILE_SLICE, ALIGNED_ADDRESS):
            return owner, method
        symbol = self.lookup_fully_qualified(owner) if owner else None
        if symbol is not None and isinstance(symbol.node, TypeInfo):
            for base in (GUEST_MEMORY, VOLATILE_REF, VOLATILE_SLICE):
                if symbol.node.has_base(base):
                    return base, method
        return owner, method

    def get_method_hook(self, fullname: str) -> Callable[[MethodContext], Type] | None:
        hook = self._method_hook(fullname)
        return None if hook is None else _outside_library(hook)

    def _method_hook(self, fullname: str) -> Callable[[MethodContext], Type] | None:
        if fullname == "builtins.object.__new__":
            return self._object_new
        owner, method = self._owner_and_method(fullname)
        if owner == GUEST_MEMORY:
            if method in ATOMIC_METHODS:
                return lambda ctx: self._atomic_call(ctx, method, ATOMIC_METHODS[method])
            if method in ("read_obj", "write_obj"):
                return lambda ctx: self._aligned_byte_valued_use(ctx, method)
            if method in ("read_obj_unaligned", "write_obj_unaligned"):
                return lambda ctx: self._type_argument_use(ctx, method, 1)
        if owner == VOLATILE_REF and method in VOLATILE_REF_ATOMICS:
            return lambda ctx: self._ref_atomic_call(ctx, method)
        if owner == VOLATILE_REF and method == "load":
            return self._ref_load
        if owner == VOLATILE_SLICE and method in ("get_ref", "get_array_ref"):
            return lambda ctx: self._type_argument_use(ctx, method, 0)
        if owner == ALIGNED_ADDRESS:
            if method in CHECKED_CONSTRUCTORS:
                return lambda ctx: self._checked_constructor(ctx, method)
            if method in ("__add__", "__sub__"):
                return self._arithmetic
            if method == "__new__":
                return self._object_new
        return None

    def get_base_class_hook(self, fullname: str) -> Callable[[ClassDefContext], None] | None:
        if fullname in AGGREGATE_BASES:
            return self._record_fields
        symbol = self.lookup_fully_qualified(fullname)
        if symbol is not None and isinstance(symbol.node, TypeInfo) and \
                any(symbol.node.has_base(base) for base in AGGREGATE_BASES):
            return self._record_fields
        return None

    # -- check 1: direct construction ----------------------------------------------

    def _direct_construction(self, ctx: FunctionContext) -> Type:
        if not _inside_library(ctx.api):
            ctx.api.fail(
                "AlignedGuestAddress cannot be constructed directly; use "
                "AlignedGuestAddress.new(T, address) (or try_new, align_up, align_down)",
                ctx.context, code=ALIGNED_CONSTRUCTION)
        return ctx.default_return_type

    def _object_new(self, ctx: MethodContext) -> Type:
        """`AlignedGuestAddress.__new__(...)` and `object.__new__(AlignedGuestAddress)`."""
        if ctx.arg_types and ctx.arg_types[0]:
            info = _class_of(ctx.arg_types[0][0])
            if info is None or info.fullname != ALIGNED_ADDRESS:
                return ctx.default_return_type
        if not _inside_library(ctx.api):
            ctx.api.fail(
                "AlignedGuestAddress cannot be constructed with __new__; use "
                "AlignedGuestAddress.new(T, address)", ctx.context,
                code=ALIGNED_CONSTRUCTION)
        return ctx.default_return_type

    # -- check 2 and 5: checked constructors ---------------------------------------

    def _checked_constructor(self, ctx: MethodContext, method: str) -> Type:
        info = _class_of(ctx.arg_types[0][0]) if ctx.arg_types and ctx.arg_types[0] else None
        if info is None:
            return ctx.default_return_type
        if not self._check_byte_valued(info, ctx, ctx.args[0][0]):
            return ctx.default_return_type
        if method in ALIGNED_VALUE_CONSTRUCTORS and len(ctx.args) > 1 and ctx.args[1]:
            value = _constant_address(ctx.args[1][0], ctx.arg_types[1][0], ctx.api)
            alignment = self._alignment(info)
            if value is not None and alignment is not None and value % alignment:
                ctx.api.fail(
                    f"Address {value:#x} is not aligned for {info.name} on "
                    f"{self.target.describe()}: it needs a multiple of {alignment}; use "
                    f"AlignedGuestAddress.align_up/align_down or fix the constant",
                    ctx.args[1][0], code=MISALIGNED)
        return ctx.default_return_type

    def _type_argument_use(self, ctx: MethodContext, method: str, position: int) -> Type:
        if len(ctx.arg_types) > position and ctx.arg_types[position]:
            info = _class_of(ctx.arg_types[position][0])
            if info is not None:
                valid = self._check_byte_valued(info, ctx, ctx.args[position][0])
                if valid and method == "read_obj_unaligned":
                    return self._value_type(info, ctx) or ctx.default_return_type
        return ctx.default_return_type

    def _aligned_byte_valued_use(self, ctx: MethodContext, method: str) -> Type:
        info = _aligned_type_argument(ctx)
        if info is None:
            return ctx.default_return_type
        self._check_byte_valued(info, ctx, ctx.args[0][0])
        if method == "read_obj":
            return self._value_type(info, ctx) or ctx.default_return_type
        return ctx.default_return_type

    def _check_byte_valued(self, info: TypeInfo, ctx: MethodContext,
                           context: Expression) -> bool:
        reason = _not_byte_valued_reason(info)
        if reason is None:
            return True
        ctx.api.fail(f"{info.name} is not ByteValued: {reason}; only plain-data fields "
                     "(ctypes scalars, endian types, nested Structures and arrays of "
                     "them) can live in guest memory", context, code=BYTE_VALUED)
        return False

    # -- check 3 and 4: atomic operations ------------------------------------------

    def _widen_atomic_signature(self, ctx: MethodSigContext) -> FunctionLike:
        """Let any AlignedGuestAddress through overload matching: `_atomic_call` decides,
        with this plugin's own error codes and the target's widths."""
        if _inside_library(ctx.api):
            return ctx.default_signature
        self._widened_calls.add(id(ctx.context))
        known = _known_address_argument(ctx)
        if known is not None:  # cheap: no type variable for mypy to solve
            return _map_items(ctx.default_signature,
                              lambda item: _with_address_type(item, known))
        return _map_items(ctx.default_signature, self._widen_item)

    def _widen_item(self, item: CallableType) -> CallableType:
        """`address: AlignedGuestAddress[_W]` with a type variable of its own, so mypy
        infers `_W` from the argument itself (an inline `AlignedGuestAddress.new(T, ...)`
        keeps its T; with `Any` or `object` the context would win)."""
        if not item.arg_types:
            return item
        first = get_proper_type(item.arg_types[0])
        if not isinstance(first, Instance) or first.type.fullname != ALIGNED_ADDRESS:
            return item
        object_type = self._object_type()
        variable = TypeVarType(
            "_W", "vm_memory_mypy._W", TypeVarId(-90_001, namespace=WIDENED_NAMESPACE), [],
            object_type, AnyType(TypeOfAny.from_omitted_generics))
        widened = first.copy_modified(args=[variable])  # pyright: ignore[reportUnknownMemberType]
        return item.copy_modified(  # pyright: ignore[reportUnknownMemberType]
            arg_types=[widened, *item.arg_types[1:]], variables=[*item.variables, variable])

    def _object_type(self) -> Instance:
        symbol = self.lookup_fully_qualified("builtins.object")
        assert symbol is not None and isinstance(symbol.node, TypeInfo)
        return Instance(symbol.node, [])

    def _atomic_call(self, ctx: MethodContext, method: str,
                     orderings: dict[str, frozenset[str]]) -> Type:
        info = _aligned_type_argument(ctx)
        self._check_orderings(ctx, method, orderings)
        if info is None:
            return ctx.default_return_type
        return self._atomic_result(ctx, method, info, ctx.args[0][0])

    def _ref_atomic_call(self, ctx: MethodContext, method: str) -> Type:
        self._check_orderings(ctx, method, VOLATILE_REF_ATOMICS[method])
        ref = get_proper_type(ctx.type)
        if isinstance(ref, Instance) and ref.args:
            info = _class_of(ref.args[0])
            if info is not None:
                return self._atomic_result(ctx, method, info, ctx.context)
        return ctx.default_return_type

    def _atomic_result(self, ctx: MethodContext, method: str, info: TypeInfo,
                       context: Any) -> Type:
        fullname = _scalar_fullname(info)
        if fullname not in ATOMIC_TYPES:
            ctx.api.fail(
                f"{info.name} is not AtomicAccess, so {method} cannot be one hardware "
                "atomic access: use a native-endian integer or c_bool (read_obj/write_obj "
                "for anything else, without atomicity)", context, code=ATOMIC_TYPE)
            return AnyType(TypeOfAny.from_error)
        assert fullname is not None
        if fullname == "ctypes.c_bool" and method in ("fetch_add", "fetch_sub"):
            ctx.api.fail(f"{method} is not defined for c_bool: use fetch_or/fetch_and, or "
                         "an integer type", context, code=ATOMIC_TYPE)
            return AnyType(TypeOfAny.from_error)
        if fullname == "ctypes.c_bool" and id(ctx.context) in self._widened_calls:
            _check_bool_values(ctx, method)
        size = scalar_size(fullname, self.target)
        width = self.target.architecture.atomic_width
        if size is not None and size > width and \
                not _in_constrained_expansion(ctx.api, info):
            ctx.api.fail(
                f"{info.name} is {size} bytes on {self.target.describe()}, which accesses "
                f"at most {width} bytes atomically: use a type of at most {width} bytes",
                context, code=ATOMIC_WIDTH)
        if method in ("write_atomic",):
            return ctx.default_return_type
        value = ctx.api.named_generic_type(
            "builtins.bool" if fullname == "ctypes.c_bool" else "builtins.int", [])
        if method == "compare_exchange":
            default = get_proper_type(ctx.default_return_type)
            if isinstance(default, TupleType) and len(default.items) == 2:
                return default.copy_modified(items=[default.items[0], value])
            return ctx.default_return_type
        return value

    def _check_orderings(self, ctx: MethodContext, method: str,
                         orderings: dict[str, frozenset[str]]) -> None:
        for parameter, allowed in orderings.items():
            if parameter not in ctx.callee_arg_names:
                continue
            index = ctx.callee_arg_names.index(parameter)
            if index >= len(ctx.args) or not ctx.args[index]:
                continue
            name = _ordering_literal(ctx.arg_types[index][0])
            if name is not None and name not in allowed:
                what = {"order": method, "success": f"{method} success",
                        "failure": f"{method} failure"}[parameter]
                ctx.api.fail(
                    f"Ordering.{name} is not valid for {what}; use one of "
                    + ", ".join(f"Ordering.{o}" for o in sorted(allowed)),
                    ctx.args[index][0], code=ORDERING)

    # -- inference -----------------------------------------------------------------

    def _ref_load(self, ctx: MethodContext) -> Type:
        ref = get_proper_type(ctx.type)
        if isinstance(ref, Instance) and ref.args:
            info = _class_of(ref.args[0])
            if info is not None:
                return self._value_type(info, ctx) or ctx.default_return_type
        return ctx.default_return_type

    def _value_type(self, info: TypeInfo, ctx: MethodContext) -> Type | None:
        """The Python type a value of `info` reads back as: `_SimpleCData[X]` gives X."""
        for base in info.mro:
            if base.fullname == "_ctypes._SimpleCData":
                instance = Instance(info, [])
                mapped = map_instance_to_supertype(instance, base)
                return mapped.args[0] if mapped.args else None
        if any(info.has_base(base) for base in AGGREGATE_BASES) or \
                info.has_base("_ctypes.Array"):
            return Instance(info, [AnyType(TypeOfAny.special_form)] * len(info.type_vars))
        return None

    def _arithmetic(self, ctx: MethodContext) -> Type:
        self_type = get_proper_type(ctx.type)
        if not isinstance(self_type, Instance) or not self_type.args or not ctx.args[0]:
            return ctx.default_return_type
        info = _class_of(self_type.args[0])
        offset = _constant_address(ctx.args[0][0], ctx.arg_types[0][0], ctx.api)
        alignment = self._alignment(info) if info is not None else None
        if offset is None or alignment is None:
            return ctx.default_return_type
        wanted = ALIGNED_ADDRESS if offset % alignment == 0 else GUEST_ADDRESS
        default = get_proper_type(ctx.default_return_type)
        for member in default.items if isinstance(default, UnionType) else [default]:
            candidate = get_proper_type(member)
            if isinstance(candidate, Instance) and candidate.type.fullname == wanted:
                return candidate
        return ctx.default_return_type

    # -- alignment and Structure fields --------------------------------------------

    def _alignment(self, info: TypeInfo) -> int | None:
        fullname = _scalar_fullname(info)
        if fullname is not None:
            return scalar_alignment(fullname, self.target)
        fields = info.metadata.get(METADATA_KEY, {}).get("fields")
        if not fields:
            return None
        alignments = [self._field_alignment(field) for field in fields]
        if any(alignment is None for alignment in alignments):
            return None
        pack = info.metadata[METADATA_KEY].get("pack")
        best = max(alignment for alignment in alignments if alignment is not None)
        return min(best, pack) if pack else best

    def _field_alignment(self, field: str) -> int | None:
        symbol = self.lookup_fully_qualified(field)
        if symbol is None or not isinstance(symbol.node, TypeInfo):
            return None
        fullname = _scalar_fullname(symbol.node)
        if fullname is not None:
            return field_alignment(fullname, self.target)
        return self._alignment(symbol.node)

    def _record_fields(self, ctx: ClassDefContext) -> None:
        """Remember a Structure's field types and any field that is not plain data
        (kept in the class metadata, so the incremental cache carries it)."""
        record: dict[str, Any] = {"fields": [], "bad": None, "pack": None}
        for statement in ctx.cls.defs.body:
            if not isinstance(statement, AssignmentStmt) or len(statement.lvalues) != 1:
                continue
            target = statement.lvalues[0]
            if not isinstance(target, NameExpr):
                continue
            if target.name == "_pack_" and isinstance(statement.rvalue, IntExpr):
                record["pack"] = statement.rvalue.value
            if target.name != "_fields_" or \
                    not isinstance(statement.rvalue, TupleExpr | ListExpr):
                continue
            for entry in statement.rvalue.items:
                if not isinstance(entry, TupleExpr | ListExpr) or len(entry.items) < 2:
                    record["fields"] = None
                    break
                name = entry.items[0].value if isinstance(entry.items[0], StrExpr) else "?"
                kind, detail = _classify_field(entry.items[1])
                if kind == "bad" and record["bad"] is None:
                    record["bad"] = f"field {name!r} is {detail}"
                if record["fields"] is not None:
                    if kind == "type":
                        record["fields"].append(detail)
                    else:
                        record["fields"] = None
        ctx.cls.info.metadata[METADATA_KEY] = record


# -- helpers --------------------------------------------------------------------------


def _configure(options: Options) -> tuple[Target, dict[str, str]]:
    """The target from the plugin's config section; also stamps `__version__` with a
    digest of it, so dmypy restarts when the target changes."""
    settings: dict[str, str] = {}
    path = options.config_file
    if path:
        if path.endswith(".toml"):
            with open(path, "rb") as file:
                section = tomllib.load(file).get("tool", {}).get(SECTION, {})
            settings = {key: str(value) for key, value in section.items()}
        else:
            parser = configparser.ConfigParser()
            parser.read(path)
            if parser.has_section(SECTION):
                settings = dict(parser.items(SECTION))
    unknown = set(settings) - {"target", "os", "data_model"}
    if unknown:
        raise ValueError(f"[{SECTION}] has unknown keys: {', '.join(sorted(unknown))}; "
                         "expected target, os, data_model")
    if "target" in settings:
        target = make_target(settings["target"], settings.get("os"),
                             settings.get("data_model"))
    else:
        host = host_target()
        target = make_target(host.architecture.name,
                             settings.get("os", host.operating_system),
                             settings.get("data_model"))
    config = {"target": target.architecture.name, "os": target.operating_system,
              "data_model": target.data_model, "plugin": PLUGIN_VERSION}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    globals()["__version__"] = f"{PLUGIN_VERSION}+{digest}"
    return target, config


def _module_of(api: Any) -> str:
    """The module being checked (the checker and the semantic analyzer differ)."""
    tree = getattr(api, "tree", None)
    module = getattr(tree, "fullname", None) or getattr(api, "cur_mod_id", "")
    return str(module or "")


def _is_library_module(module: str) -> bool:
    return module == "vm_memory" or module.startswith("vm_memory.")


def _inside_library(api: Any) -> bool:
    return _is_library_module(_module_of(api))


def _outside_library(hook: Callable[[MethodContext], Type]) -> Callable[[MethodContext], Type]:
    """`hook`, but a no-op inside vm_memory: the library is generic over T, and its
    verdicts then do not depend on the target (see `report_config_data`)."""
    def checked(ctx: MethodContext) -> Type:
        if _inside_library(ctx.api):
            return ctx.default_return_type
        return hook(ctx)
    return checked


def _in_constrained_expansion(api: Any, info: TypeInfo) -> bool:
    """Whether the call sits in a function generic over a value-constrained TypeVar (such
    as `AtomicInteger`) that has `info` among its values: mypy checks such a body once per
    value, and the width then depends on which value a caller picks, not on this call."""
    scope = getattr(api, "scope", None)
    for frame in getattr(scope, "stack", ()):
        variables: list[Any] = []
        if isinstance(frame, TypeInfo):
            variables = list(frame.defn.type_vars)
        elif isinstance(frame, FuncItem) and isinstance(frame.type, CallableType):
            variables = list(frame.type.variables)
        for variable in variables:
            if isinstance(variable, TypeVarType) and any(
                    _class_of(value) is info for value in variable.values):
                return True
    return False


BOOL_VALUE_PARAMETERS: Final = ("value", "expected", "desired")


def _check_bool_values(ctx: MethodContext, method: str) -> None:
    """A c_bool atomic takes bools: the widened signature no longer says so."""
    bool_type = ctx.api.named_generic_type("builtins.bool", [])
    for parameter in BOOL_VALUE_PARAMETERS:
        if parameter not in ctx.callee_arg_names:
            continue
        index = ctx.callee_arg_names.index(parameter)
        if index >= len(ctx.arg_types) or not ctx.arg_types[index]:
            continue
        given = ctx.arg_types[index][0]
        if not is_subtype(given, bool_type):
            ctx.api.fail(
                f'Argument "{parameter}" to "{method}" of "GuestMemory" has incompatible '
                f'type "{given}"; expected "bool" (the address is for c_bool)',
                ctx.args[index][0], code=codes.ARG_TYPE)


def _accept_anything(ctx: FunctionSigContext) -> FunctionLike:
    """AlignedGuestAddress(...) with any arguments: only our own error is reported."""
    signature = ctx.default_signature
    any_type = AnyType(TypeOfAny.special_form)
    returned = get_proper_type(signature.ret_type)
    if isinstance(returned, Instance):
        returned = returned.copy_modified(args=[any_type] * len(returned.args))  # pyright: ignore[reportUnknownMemberType]
    return signature.copy_modified(arg_types=[any_type, any_type],  # pyright: ignore[reportUnknownMemberType]
                                   arg_kinds=[ARG_STAR, ARG_STAR2], arg_names=[None, None],
                                   ret_type=returned, variables=[])


def _known_address_argument(ctx: MethodSigContext) -> Instance | None:
    """The type of the address argument when it is a variable already known to be an
    `AlignedGuestAddress[T]`: the widened signature can then name that type exactly, and
    mypy has no type variable to solve for the call."""
    if not ctx.args or not ctx.args[0]:
        return None
    expression = ctx.args[0][0]
    if not isinstance(expression, RefExpr) or not isinstance(expression.node, Var) or \
            expression.node.type is None:
        return None
    address = get_proper_type(expression.node.type)
    if not isinstance(address, Instance) or address.type.fullname != ALIGNED_ADDRESS or \
            not address.args:
        return None
    return address


def _with_address_type(item: CallableType, address: Instance) -> CallableType:
    first = get_proper_type(item.arg_types[0]) if item.arg_types else None
    if not isinstance(first, Instance) or first.type.fullname != ALIGNED_ADDRESS:
        return item
    return item.copy_modified(arg_types=[address, *item.arg_types[1:]])  # pyright: ignore[reportUnknownMemberType]


def _map_items(signature: FunctionLike,
               change: Callable[[CallableType], CallableType]) -> FunctionLike:
    if isinstance(signature, Overloaded):
        return Overloaded([change(item) for item in signature.items])
    assert isinstance(signature, CallableType)
    return change(signature)


def _class_of(typ: Type) -> TypeInfo | None:
    """The class a type expression names: `c_uint32` (a type object) or `type[X]`, or the
    class of an instance type."""
    proper = get_proper_type(typ)
    if isinstance(proper, CallableType) and proper.is_type_obj():
        return proper.type_object()
    if isinstance(proper, Overloaded) and proper.is_type_obj():
        return proper.type_object()
    if isinstance(proper, TypeType):
        item = get_proper_type(proper.item)
        return item.type if isinstance(item, Instance) else None
    if isinstance(proper, Instance):
        return proper.type
    return None


def _aligned_type_argument(ctx: MethodContext) -> TypeInfo | None:
    """T of the AlignedGuestAddress[T] passed as the first argument."""
    if not ctx.arg_types or not ctx.arg_types[0]:
        return None
    address = get_proper_type(ctx.arg_types[0][0])
    if isinstance(address, Instance) and address.type.fullname == ALIGNED_ADDRESS and \
            address.args:
        return _class_of(address.args[0])
    return None


def _scalar_fullname(info: TypeInfo) -> str | None:
    """The fullname of the known scalar `info` is or derives from, if any."""
    for base in info.mro:
        if scalar_size(base.fullname, _ANY_TARGET) is not None or \
                base.fullname in ATOMIC_TYPES:
            return base.fullname
    return None


_ANY_TARGET: Final = make_target("x86_64")


def _not_byte_valued_reason(info: TypeInfo) -> str | None:
    """Why `info` is not ByteValued, if its class or a base (inherited `_fields_`) says so."""
    for base in info.mro:
        if base.fullname in NOT_BYTE_VALUED:
            return NOT_BYTE_VALUED[base.fullname]
        if base.fullname in NOT_BYTE_VALUED_BASES:
            return NOT_BYTE_VALUED_BASES[base.fullname]
        record = base.metadata.get(METADATA_KEY)
        if record and record.get("bad"):
            return str(record["bad"])
    return None


def _classify_field(expression: Expression) -> tuple[str, str]:
    """("type", fullname) for a named field type, ("bad", why) for one that is not plain
    data, ("unknown", "") when it cannot be told statically."""
    if isinstance(expression, OpExpr) and expression.op == "*":
        return _classify_field(expression.left)  # an array: its element decides
    if isinstance(expression, CallExpr) and isinstance(expression.callee, RefExpr) and \
            expression.callee.fullname in POINTER_FACTORIES:
        factory = expression.callee.fullname.rpartition(".")[2]
        return "bad", f"{factory}(...), an address in this process"
    if isinstance(expression, RefExpr):
        node = expression.node
        fullname = expression.fullname
        if isinstance(node, TypeInfo):
            fullname = node.fullname
            reason = _not_byte_valued_reason(node)
            if reason is not None:
                return "bad", f"{node.name} ({reason})"
        if fullname in NOT_BYTE_VALUED:
            return "bad", f"{fullname.rpartition('.')[2]} ({NOT_BYTE_VALUED[fullname]})"
        if fullname:
            return "type", fullname
    return "unknown", ""


def _constant_address(expression: Expression, typ: Type, api: Any) -> int | None:
    """The value of an address argument known statically: an int literal, a Final name,
    a constant expression, or `GuestAddress(<one of those>)`."""
    literals = try_getting_int_literals_from_type(typ)
    if literals and len(literals) == 1:
        return literals[0]
    if isinstance(expression, CallExpr) and isinstance(expression.callee, RefExpr) and \
            expression.callee.fullname == GUEST_ADDRESS and len(expression.args) == 1:
        expression = expression.args[0]
    return _constant_int(expression, api)


def _constant_int(expression: Expression, api: Any) -> int | None:
    if isinstance(expression, IntExpr):
        return expression.value
    if isinstance(expression, RefExpr) and isinstance(expression.node, Var):
        value = expression.node.final_value
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    folded = constant_fold_expr(expression, _module_of(api))
    return folded if isinstance(folded, int) and not isinstance(folded, bool) else None


def _ordering_literal(typ: Type) -> str | None:
    """The member name of a statically known `Ordering` value."""
    proper = get_proper_type(typ)
    if isinstance(proper, Instance) and proper.last_known_value is not None:
        proper = proper.last_known_value
    if isinstance(proper, LiteralType) and proper.fallback.type.fullname == ORDERING_ENUM and \
            isinstance(proper.value, str):
        return proper.value
    return None


def plugin(version: str) -> type[Plugin]:
    """mypy's entry point."""
    return VmMemoryPlugin

