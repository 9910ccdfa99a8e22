"""vm-memory-atomic-type and vm-memory-atomic-width: an atomic operation's T must be
AtomicAccess (a native-endian integer or c_bool; no fetch_add on c_bool), and no wider
than the target accesses lock-free. Also the precise result (`int`, `bool`,
`tuple[bool, int]`).

Generic code: mypy checks a body generic over `AtomicInteger` (or a TypeVar of the user's
constrained to atomic integer types) once per value, so the width is checked at the
callers instead (`generic_call_site`), on the type they pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from mypy import errorcodes as codes
from mypy.nodes import CallExpr, MemberExpr, RefExpr, TypeInfo, Var
from mypy.plugin import FunctionContext, MethodContext, MethodSigContext
from mypy.subtypes import is_subtype
from mypy.types import (
    AnyType,
    CallableType,
    FunctionLike,
    Instance,
    TupleType,
    Type,
    TypeOfAny,
    TypeType,
    TypeVarId,
    TypeVarType,
    get_proper_type,
)

from vm_memory_mypy.ctypes_model import ATOMIC_TYPES, scalar_size
from vm_memory_mypy.errorcodes import ATOMIC_TYPE, ATOMIC_WIDTH
from vm_memory_mypy.names import (
    ALIGNED_ADDRESS,
    ATOMIC_INTEGER,
    CHECKED_CONSTRUCTORS,
    GUEST_MEMORY,
    GUEST_MEMORY_ATOMICS,
    VOLATILE_REF,
    VOLATILE_REF_ATOMICS,
)
from vm_memory_mypy.state import MethodHook, State
from vm_memory_mypy.typeutil import (
    aligned_type_argument,
    class_of,
    first_argument_class,
    in_constrained_expansion,
    inside_library,
    map_items,
    scalar_fullname,
)

WIDENED_NAMESPACE: Final = "vm_memory_mypy.widened"
INTEGER_ONLY_METHODS: Final = frozenset({"fetch_add", "fetch_sub"})
"""The atomic methods with no c_bool overload."""
INTEGER_ONLY: Final = ATOMIC_TYPES - {"ctypes.c_bool"}
BOOL_VALUE_PARAMETERS: Final = ("value", "expected", "desired")

# -- the signature: let every AlignedGuestAddress through overload matching -----------


def widen_signature(state: State, ctx: MethodSigContext, method: str) -> FunctionLike:
    """`address: AlignedGuestAddress[_W]` for any `_W`: the atomic check then decides,
    with this plugin's codes and the target's widths, instead of a plain overload error."""
    accepted = INTEGER_ONLY if method in INTEGER_ONLY_METHODS else ATOMIC_TYPES
    if inside_library(ctx.api) or _inline_address_type(ctx) in accepted:
        return ctx.default_signature
    known = _known_address(ctx)
    if known is not None and scalar_fullname_of(known.args[0]) in accepted:
        return ctx.default_signature  # the declared overloads already fit: mypy is faster
    state.widened_calls.add(id(ctx.context))
    if known is not None:  # cheap: no type variable for mypy to solve
        return map_items(ctx.default_signature, lambda item: _with_address(item, known))
    object_type = state.info("builtins.object")
    assert object_type is not None
    return map_items(ctx.default_signature,
                     lambda item: _widened(item, Instance(object_type, [])))


def _known_address(ctx: MethodSigContext) -> Instance | None:
    """The address argument's type when it is a variable, or an attribute of a class,
    already known to be an `AlignedGuestAddress[T]` (a dataclass of addresses,
    `self.STATUS`, `Regs.STATUS`)."""
    if not ctx.args or not ctx.args[0]:
        return None
    expression = ctx.args[0][0]
    declared: Type | None = None
    if isinstance(expression, RefExpr) and isinstance(expression.node, Var):
        declared = expression.node.type
    elif isinstance(expression, MemberExpr) and isinstance(expression.expr, RefExpr):
        declared = _attribute_type(expression.expr.node, expression.name)
    if declared is None:
        return None
    address = get_proper_type(declared)
    if not isinstance(address, Instance) or address.type.fullname != ALIGNED_ADDRESS or \
            not address.args:
        return None
    return address


def _attribute_type(owner: object, name: str) -> Type | None:
    """The declared type of attribute `name` of a class, or of a variable whose type is a
    non-generic class; None where a lookup could tell another story (a generic class's
    attribute, a property, a descriptor: mypy then solves the call itself)."""
    if isinstance(owner, Var) and owner.type is not None:
        proper = get_proper_type(owner.type)
        owner = proper.type if isinstance(proper, Instance) and not proper.args else None
    if not isinstance(owner, TypeInfo) or owner.type_vars:
        return None
    member = owner.get(name)
    node = member.node if member is not None else None
    if not isinstance(node, Var) or node.is_property:
        return None
    return node.type


def scalar_fullname_of(typ: Type) -> str | None:
    info = class_of(typ)
    return scalar_fullname(info) if info is not None else None


def _inline_address_type(ctx: MethodSigContext) -> str | None:
    """The scalar T of an address argument written `AlignedGuestAddress.new(T, ...)` (or
    another checked constructor) with T named directly."""
    if not ctx.args or not ctx.args[0]:
        return None
    call = ctx.args[0][0]
    if not isinstance(call, CallExpr) or not isinstance(call.callee, MemberExpr) or \
            call.callee.name not in CHECKED_CONSTRUCTORS or not call.args:
        return None
    owner = call.callee.expr
    if not isinstance(owner, RefExpr) or owner.fullname != ALIGNED_ADDRESS:
        return None
    kind = call.args[0]
    if isinstance(kind, RefExpr) and isinstance(kind.node, TypeInfo):
        return scalar_fullname(kind.node)
    return None


def _with_address(item: CallableType, address: Instance) -> CallableType:
    first = get_proper_type(item.arg_types[0]) if item.arg_types else None
    if not isinstance(first, Instance) or first.type.fullname != ALIGNED_ADDRESS:
        return item
    return item.copy_modified(arg_types=[address, *item.arg_types[1:]])  # pyright: ignore[reportUnknownMemberType]


def _widened(item: CallableType, object_type: Instance) -> CallableType:
    """A type variable of its own, so mypy infers `_W` from the argument itself (an
    inline `AlignedGuestAddress.new(T, ...)` keeps its T)."""
    first = get_proper_type(item.arg_types[0]) if item.arg_types else None
    if not isinstance(first, Instance) or first.type.fullname != ALIGNED_ADDRESS:
        return item
    variable = TypeVarType(
        "_W", "vm_memory_mypy._W", TypeVarId(-90_001, namespace=WIDENED_NAMESPACE), [],
        object_type, AnyType(TypeOfAny.from_omitted_generics))
    widened = first.copy_modified(args=[variable])  # pyright: ignore[reportUnknownMemberType]
    return item.copy_modified(  # pyright: ignore[reportUnknownMemberType]
        arg_types=[widened, *item.arg_types[1:]], variables=[*item.variables, variable])


# -- the call -------------------------------------------------------------------------


def width_error(state: State, api: Any, info: TypeInfo, fullname: str,
                context: Any) -> None:
    size = scalar_size(fullname, state.target)
    width = state.target.architecture.atomic_width
    if size is not None and size > width:
        api.fail(f"{info.name} is {size} bytes on {state.target.describe()}, which "
                 f"accesses at most {width} bytes atomically: use a type of at most "
                 f"{width} bytes", context, code=ATOMIC_WIDTH)


def atomic_result(state: State, ctx: MethodContext, method: str, info: TypeInfo,
                  context: Any, *, declared_is_precise: bool = False) -> Type:
    """The checks of one atomic call on T = `info`, and its result type.
    `declared_is_precise`: where `widen_signature` left the declared overloads alone,
    the one mypy matched already gives the precise result (`int`, `bool`, `tuple`)."""
    fullname = scalar_fullname(info)
    if fullname not in ATOMIC_TYPES:
        ctx.api.fail(
            f"{info.name} is not AtomicAccess, so {method} cannot be one hardware "
            "atomic access: use a native-endian integer or c_bool (read_obj/write_obj "
            "for anything else, without atomicity)", context, code=ATOMIC_TYPE)
        return AnyType(TypeOfAny.from_error)
    assert fullname is not None
    is_bool = fullname == "ctypes.c_bool"
    if is_bool and method in INTEGER_ONLY_METHODS:
        ctx.api.fail(f"{method} is not defined for c_bool: use fetch_or/fetch_and, or "
                     "an integer type", context, code=ATOMIC_TYPE)
        return AnyType(TypeOfAny.from_error)
    widened = id(ctx.context) in state.widened_calls
    if is_bool and widened:
        _check_bool_values(ctx, method)
    size = scalar_size(fullname, state.target)
    if size is not None and size > state.target.architecture.atomic_width and \
            not in_constrained_expansion(ctx.api, info):
        width_error(state, ctx.api, info, fullname, context)
    if method == "write_atomic" or (declared_is_precise and not widened):
        return ctx.default_return_type
    value = ctx.api.named_generic_type("builtins.bool" if is_bool else "builtins.int", [])
    if method == "compare_exchange":
        default = get_proper_type(ctx.default_return_type)
        if isinstance(default, TupleType) and len(default.items) == 2:
            return default.copy_modified(items=[default.items[0], value])
        return ctx.default_return_type
    return value


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


def memory_atomic(method: str) -> MethodHook:
    def hook(state: State, ctx: MethodContext) -> Type:
        info = aligned_type_argument(ctx)
        if info is None:
            return ctx.default_return_type
        return atomic_result(state, ctx, method, info, ctx.args[0][0],
                             declared_is_precise=True)
    return hook


def ref_atomic(method: str) -> MethodHook:
    def hook(state: State, ctx: MethodContext) -> Type:
        info = first_argument_class(ctx.type, VOLATILE_REF)
        if info is None:
            return ctx.default_return_type
        return atomic_result(state, ctx, method, info, ctx.context)
    return hook


METHOD_HOOKS: Final[dict[tuple[str, str], MethodHook]] = {
    **{(GUEST_MEMORY, method): memory_atomic(method) for method in GUEST_MEMORY_ATOMICS},
    **{(VOLATILE_REF, method): ref_atomic(method) for method in VOLATILE_REF_ATOMICS},
}


# -- helpers generic over AtomicInteger: checked where they are called ---------------


def atomic_integer_parameters(signature: Type | None) -> list[int]:
    """Positions of the parameters whose type mentions `AtomicInteger`, or a TypeVar of
    the user's constrained to atomic integer types like it (see `is_atomic_integer`)."""
    proper = get_proper_type(signature)
    if not isinstance(proper, CallableType):
        return []
    integers = {variable.fullname for variable in proper.variables
                if isinstance(variable, TypeVarType) and is_atomic_integer(variable)}
    if not integers:
        return []
    return [index for index, argument in enumerate(proper.arg_types)
            if _solved_class(argument) in integers]


def is_atomic_integer(variable: TypeVarType) -> bool:
    """`AtomicInteger`, or a TypeVar whose values are all AtomicAccess types: mypy checks
    a body generic over one once per value (`in_constrained_expansion` silences the
    width there), so its callers are checked instead."""
    if variable.fullname == ATOMIC_INTEGER:
        return True
    return bool(variable.values) and all(
        scalar_fullname_of(value) in ATOMIC_TYPES for value in variable.values)


def _solved_class(typ: Type) -> str | None:
    """The TypeVar fullname inside `AlignedGuestAddress[T]`, `VolatileRef[T]`, `type[T]`."""
    proper = get_proper_type(typ)
    if isinstance(proper, Instance) and proper.args:
        proper = get_proper_type(proper.args[0])
    elif isinstance(proper, TypeType):
        proper = get_proper_type(proper.item)
    return proper.fullname if isinstance(proper, TypeVarType) else None


CallSiteHook = Callable[[FunctionContext | MethodContext], Type]


def generic_call_site(state: State, positions: list[int], count: int) -> CallSiteHook:
    """A function hook: the width check on the types a caller passes to a helper generic
    over AtomicInteger (skipped where the caller is generic over it too). `positions`
    index the helper's `count` parameters; a call has one fewer where the first is
    bound (`self`, or `cls` of a classmethod, called on an instance or the class)."""
    def hook(ctx: FunctionContext | MethodContext) -> Type:
        bound = count - len(ctx.arg_types)
        for position in positions:
            index = position - bound
            if index < 0 or index >= len(ctx.arg_types) or not ctx.arg_types[index]:
                continue
            info = _argument_class(ctx.arg_types[index][0])
            if info is None or in_constrained_expansion(ctx.api, info):
                continue
            fullname = scalar_fullname(info)
            if fullname is not None:
                width_error(state, ctx.api, info, fullname, ctx.args[index][0])
        return ctx.default_return_type
    return hook


def _argument_class(typ: Type) -> TypeInfo | None:
    proper = get_proper_type(typ)
    if isinstance(proper, Instance) and proper.args:
        return class_of(proper.args[0])
    return class_of(proper)
