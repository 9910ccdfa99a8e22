"""Shared helpers over mypy's types: which class a type names, what a ctypes value reads
back as, whether a call sits inside the library or in a constrained expansion."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from mypy.maptype import map_instance_to_supertype
from mypy.nodes import FuncItem, MypyFile, TypeInfo
from mypy.plugin import MethodContext
from mypy.types import (
    AnyType,
    CallableType,
    FunctionLike,
    Instance,
    Overloaded,
    Type,
    TypeOfAny,
    TypeType,
    TypeVarType,
    get_proper_type,
)

from vm_memory_mypy.ctypes_model import AGGREGATE_BASES, ATOMIC_TYPES, FIXED_SIZES, scalar_size
from vm_memory_mypy.names import ALIGNED_ADDRESS
from vm_memory_mypy.targets import make_target

_ANY_TARGET: Final = make_target("x86_64")
_KNOWN_SCALARS: Final = frozenset(
    name for name in (*FIXED_SIZES, *ATOMIC_TYPES, "ctypes.c_longdouble", "ctypes.c_wchar")
    if scalar_size(name, _ANY_TARGET) is not None or name in ATOMIC_TYPES)
SIMPLE_DATA: Final = "_ctypes._SimpleCData"
ARRAY: Final = "_ctypes.Array"


def class_of(typ: Type) -> TypeInfo | None:
    """The class a type expression names: `c_uint32` (a type object) or `type[X]`, or the
    class of an instance type."""
    proper = get_proper_type(typ)
    if isinstance(proper, CallableType | Overloaded) and proper.is_type_obj():
        return proper.type_object()
    if isinstance(proper, TypeType):
        item = get_proper_type(proper.item)
        return item.type if isinstance(item, Instance) else None
    if isinstance(proper, Instance):
        return proper.type
    return None


def first_argument(typ: Type, fullname: str) -> Type | None:
    """T of an `X[T]` instance type whose class is `fullname` or derives from it (a
    TypeVar bound to one counts as its bound)."""
    proper = get_proper_type(typ)
    if isinstance(proper, TypeVarType):
        proper = get_proper_type(proper.upper_bound)
    if not isinstance(proper, Instance):
        return None
    if proper.type.fullname == fullname:
        return proper.args[0] if proper.args else None
    base = next((info for info in proper.type.mro if info.fullname == fullname), None)
    if base is None:
        return None
    mapped = map_instance_to_supertype(proper, base)
    return mapped.args[0] if mapped.args else None


def first_argument_class(typ: Type, fullname: str) -> TypeInfo | None:
    """The class of T of an `X[T]` instance type (see `first_argument`)."""
    argument = first_argument(typ, fullname)
    return class_of(argument) if argument is not None else None


def aligned_argument_type(ctx: MethodContext) -> Type | None:
    """T of the AlignedGuestAddress[T] passed as the first argument."""
    if not ctx.arg_types or not ctx.arg_types[0]:
        return None
    return first_argument(ctx.arg_types[0][0], ALIGNED_ADDRESS)


def aligned_type_argument(ctx: MethodContext) -> TypeInfo | None:
    """The class of T of the AlignedGuestAddress[T] passed as the first argument."""
    argument = aligned_argument_type(ctx)
    return class_of(argument) if argument is not None else None


def array_element(typ: Type) -> Type | None:
    """The element type of the ctypes array `typ` names, or None if it names none. mypy
    types `c_uint32 * 3` as `type[Array[c_uint32]]`: the element is the type argument,
    which `class_of` drops."""
    proper = get_proper_type(typ)
    if isinstance(proper, TypeType):
        proper = get_proper_type(proper.item)
    elif isinstance(proper, CallableType) and proper.is_type_obj():
        proper = get_proper_type(proper.ret_type)
    if not isinstance(proper, Instance) or proper.type.fullname in _KNOWN_SCALARS:
        return None  # a scalar (most calls): no walk of its bases
    base = next((info for info in proper.type.mro if info.fullname == ARRAY), None)
    if base is None:
        return None
    mapped = map_instance_to_supertype(proper, base)
    return mapped.args[0] if mapped.args else None


def innermost_element(typ: Type) -> Type | None:
    """The element type of an array (of arrays...) that is no array itself, or None if
    `typ` names no array."""
    element = array_element(typ)
    while element is not None:
        inner = array_element(element)
        if inner is None:
            return element
        element = inner
    return None


def type_name(typ: Type) -> str | None:
    """How a message names the type `typ` names: its class, `Array[c_uint32]` for an
    array (its length is not in the type)."""
    element = array_element(typ)
    if element is not None:
        inner = type_name(element)
        return f"Array[{inner}]" if inner is not None else None
    info = class_of(typ)
    return info.name if info is not None else None


def scalar_fullname(info: TypeInfo) -> str | None:
    """The fullname of the known scalar `info` is or derives from, if any."""
    if info.fullname in _KNOWN_SCALARS:
        return info.fullname
    for base in info.mro:
        if base.fullname in _KNOWN_SCALARS:
            return base.fullname
    return None


def is_known_scalar(fullname: str) -> bool:
    """A ctypes or vm_memory scalar whose size the target gives."""
    return fullname in _KNOWN_SCALARS


def is_aggregate(info: TypeInfo) -> bool:
    return any(info.has_base(base) for base in AGGREGATE_BASES) or info.has_base(ARRAY)


def value_type(info: TypeInfo) -> Type | None:
    """The Python type a value of `info` reads back as: `_SimpleCData[X]` gives X; an
    aggregate reads back as itself."""
    for base in info.mro:
        if base.fullname == SIMPLE_DATA:
            mapped = map_instance_to_supertype(Instance(info, []), base)
            return mapped.args[0] if mapped.args else None
    if is_aggregate(info):
        return Instance(info, [AnyType(TypeOfAny.special_form)] * len(info.type_vars))
    return None


def is_fixed_scalar(fullname: str) -> bool:
    return fullname in FIXED_SIZES


def module_of(api: Any) -> str:
    """The module being checked (the checker and the semantic analyzer differ)."""
    tree = getattr(api, "tree", None)
    if tree is not None:
        return str(tree.fullname)
    return str(getattr(api, "cur_mod_id", "") or "")


def current_tree(api: Any) -> MypyFile | None:
    """The syntax tree of the module being analyzed or checked."""
    tree = getattr(api, "tree", None) or getattr(api, "cur_mod_node", None)
    return tree if isinstance(tree, MypyFile) else None


def is_library_module(module: str) -> bool:
    return module == "vm_memory" or module.startswith("vm_memory.")


def inside_library(api: Any) -> bool:
    """vm_memory itself is generic over T: its verdicts must not depend on the target."""
    tree = getattr(api, "tree", None)
    module: str = tree.fullname if tree is not None else getattr(api, "cur_mod_id", "")
    return module.startswith("vm_memory") and (len(module) == 9 or module[9] == ".")


def in_constrained_expansion(api: Any, info: TypeInfo) -> bool:
    """Whether the call sits in a function generic over a value-constrained TypeVar (such
    as `AtomicInteger`) that has `info` among its values: mypy checks such a body once per
    value, and the width then depends on which value a caller picks (checked at the
    callers: `checks.atomics.generic_call_site`)."""
    scope = getattr(api, "scope", None)
    for frame in getattr(scope, "stack", ()):
        variables: Sequence[Any] = ()
        if isinstance(frame, TypeInfo):
            variables = frame.defn.type_vars
        elif isinstance(frame, FuncItem) and isinstance(frame.type, CallableType):
            variables = frame.type.variables
        for variable in variables:
            if isinstance(variable, TypeVarType) and variable.values and any(
                    class_of(value) is info for value in variable.values):
                return True
    return False


def reported_through_overload_matching(api: Any, check: Callable[[MethodContext], Type],
                                       ctx: MethodContext) -> Type:
    """`check(ctx)`, whose errors reach the user even while mypy matches overloads.

    While mypy tries each item of an overloaded method it silences errors, and an item
    on which the plugin reported one (a width, an ordering) would count as not matching:
    mypy would then try the next item and add a false argument error of its own.
    Reported around the silencing, the right item matches and the verdict is the
    plugin's alone. The checks depend only on the call's arguments, not on the item
    tried, so an item tried in vain repeats the same errors, which mypy merges.
    (A plain try/finally: this runs on every checked call.)
    """
    errors = getattr(getattr(api, "msg", None), "errors", None)
    watchers = getattr(errors, "_watchers", None)
    if not isinstance(watchers, list) or not watchers:
        return check(ctx)
    errors._watchers = []  # type: ignore[union-attr]
    try:
        return check(ctx)
    finally:
        errors._watchers = watchers  # type: ignore[union-attr]


def map_items(signature: FunctionLike,
              change: Callable[[CallableType], CallableType]) -> FunctionLike:
    """`change` applied to each item of an overloaded signature (or to the one)."""
    if isinstance(signature, Overloaded):
        return Overloaded([change(item) for item in signature.items])
    assert isinstance(signature, CallableType)
    return change(signature)
