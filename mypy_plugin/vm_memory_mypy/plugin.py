"""The mypy plugin of vm-memory: alignment, atomic width, orderings and plain data,
proven statically for a configured target.

Enable it with `plugins = ["vm_memory_mypy.plugin"]`; its settings live in its own
section (`vm_memory_mypy.config`). This module only dispatches: each check is a module
of `vm_memory_mypy.checks` whose `METHOD_HOOKS` say which library methods it looks at;
`fields` reads Structures as mypy analyzes them, `constants` folds addresses.
"""

# mypy annotates `copy_modified` with an alias pyright cannot resolve: the checks that
# call it say so (`reportUnknownMemberType`).

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Final

from mypy.nodes import Decorator, FuncBase
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
from mypy.types import CallableType, FunctionLike, Type, get_proper_type

from vm_memory_mypy import config, fields
from vm_memory_mypy.checks import atomics, byte_valued, construction, inference, misalignment
from vm_memory_mypy.checks import ordering as ordering_check
from vm_memory_mypy.constants import enum_constants
from vm_memory_mypy.ctypes_model import AGGREGATE_BASES
from vm_memory_mypy.names import (
    ALIGNED_ADDRESS,
    ENUM_BASES,
    GUEST_MEMORY,
    GUEST_MEMORY_ATOMICS,
    LIBRARY_CLASSES,
    RECEIVERS,
)
from vm_memory_mypy.state import MethodHook, State
from vm_memory_mypy.typeutil import inside_library, reported_through_overload_matching

CHECKS: Final = (construction, byte_valued, misalignment, ordering_check, atomics, inference)
"""In the order they run on one call; each gets the type the previous one gave."""
METHOD_HOOKS: Final[dict[tuple[str, str], tuple[MethodHook, ...]]] = {}
for _check in CHECKS:
    for _key, _hook in _check.METHOD_HOOKS.items():
        METHOD_HOOKS[_key] = (*METHOD_HOOKS.get(_key, ()), _hook)


def __getattr__(name: str) -> str:
    """`__version__`: the version with a digest of the configuration in force, which
    `dmypy run` compares to decide whether to restart (see `vm_memory_mypy.config`)."""
    if name == "__version__":
        return config.versioned()
    raise AttributeError(name)


class VmMemoryPlugin(Plugin):
    """Checks the vm_memory API against the configured target."""

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        try:
            self.configuration = config.load(options.config_file)
        except config.ConfigurationError as error:  # a user's mistake, not a crash
            sys.stderr.write(f"{options.config_file}: {error}\n")
            raise SystemExit(2) from None
        self.state = State(self.configuration.target, self.lookup_fully_qualified)
        # mypy asks for a hook for every call of the program, and again on every
        # overload item and operator it tries: each answer is computed once per fullname.
        self._owners: dict[str, tuple[str, str]] = {}
        self._generic: dict[str, atomics.CallSiteHook | None] = {}
        self._function_hooks: dict[str, Callable[[FunctionContext], Type] | None] = {}
        self._method_hooks: dict[str, Callable[[MethodContext], Type] | None] = {}
        self._signature_hooks: dict[
            str, Callable[[MethodSigContext], FunctionLike] | None] = {}
        self._widening = {method: functools.partial(atomics.widen_signature, self.state,
                                                    method=method)
                          for method in GUEST_MEMORY_ATOMICS}

    def report_config_data(self, ctx: ReportConfigContext) -> dict[str, str]:
        """Stored with each module in the cache: a module checked for another target is
        stale."""
        return self.configuration.data

    def get_function_signature_hook(
            self, fullname: str) -> Callable[[FunctionSigContext], FunctionLike] | None:
        return construction.accept_anything if fullname == ALIGNED_ADDRESS else None

    def get_function_hook(self, fullname: str) -> Callable[[FunctionContext], Type] | None:
        try:
            return self._function_hooks[fullname]
        except KeyError:
            hook = construction.direct_construction if fullname == ALIGNED_ADDRESS \
                else self._generic_helper(fullname)
            self._function_hooks[fullname] = hook
            return hook

    def get_method_signature_hook(
            self, fullname: str) -> Callable[[MethodSigContext], FunctionLike] | None:
        try:
            return self._signature_hooks[fullname]
        except KeyError:
            owner, method = self._owner_and_method(fullname)
            hook = self._widening[method] \
                if owner == GUEST_MEMORY and method in GUEST_MEMORY_ATOMICS else None
            self._signature_hooks[fullname] = hook
            return hook

    def get_method_hook(self, fullname: str) -> Callable[[MethodContext], Type] | None:
        try:
            return self._method_hooks[fullname]
        except KeyError:
            hooks = METHOD_HOOKS.get(self._owner_and_method(fullname))
            hook = self._generic_helper(fullname) if hooks is None else self._chain(hooks)
            self._method_hooks[fullname] = hook
            return hook

    def _chain(self, hooks: tuple[MethodHook, ...]) -> Callable[[MethodContext], Type]:
        """The checks of one method, run in order, each given the type the last gave
        (the last one's type is the call's: no context is rebuilt for it)."""
        state = self.state
        *leading, last = hooks

        def checks(ctx: MethodContext) -> Type:
            for hook in leading:
                returned = hook(state, ctx)
                if returned is not ctx.default_return_type:
                    ctx = ctx._replace(default_return_type=returned)
            return last(state, ctx)

        def run(ctx: MethodContext) -> Type:
            if inside_library(ctx.api):  # generic over T: no verdict may depend on it
                return ctx.default_return_type
            return reported_through_overload_matching(ctx.api, checks, ctx)
        return run

    def get_base_class_hook(self, fullname: str) -> Callable[[ClassDefContext], None] | None:
        if fullname in AGGREGATE_BASES:
            return fields.record_fields
        if fullname in ENUM_BASES:
            return enum_constants
        info = self.state.info(fullname)
        if info is not None and any(info.has_base(base) for base in AGGREGATE_BASES):
            return fields.record_fields
        return None

    def _owner_and_method(self, fullname: str) -> tuple[str, str]:
        """The library class a hook name belongs to. mypy names hooks after the
        receiver's static class (`GuestMemoryMmap.read_atomic`), and on a TypeVar
        receiver after the declaring class's short name (`read_atomic of GuestMemory`).
        mypy asks for every call of the program: the answers are memoized."""
        known = self._owners.get(fullname)
        if known is None:
            known = self._owners[fullname] = self._find_owner(fullname)
        return known

    def _find_owner(self, fullname: str) -> tuple[str, str]:
        method, of, declaring = fullname.partition(" of ")
        if of:
            return LIBRARY_CLASSES.get(declaring, declaring), method
        owner, _, method = fullname.rpartition(".")
        if not any(key[1] == method for key in METHOD_HOOKS):
            return owner, method  # no check looks at this name: no lookup needed
        info = self.state.info(owner) if owner else None
        if info is not None and owner not in RECEIVERS:
            for base in RECEIVERS:
                if info.has_base(base):
                    return base, method
        return owner, method

    def _generic_helper(self, fullname: str) -> atomics.CallSiteHook | None:
        """A user function generic over AtomicInteger (or over a TypeVar of its own
        constrained to atomic integer types): the width check at its callers."""
        if fullname not in self._generic:
            node = self._definition(fullname)
            if isinstance(node, Decorator) and not node.decorators and \
                    not node.func.is_property:
                # staticmethod, classmethod (also final, override, abstractmethod): mypy
                # drops these from `decorators`, so none left keeps the signature
                node = node.func
            signature = get_proper_type(node.type) if isinstance(node, FuncBase) else None
            positions = atomics.atomic_integer_parameters(signature)
            self._generic[fullname] = atomics.generic_call_site(
                self.state, positions, len(signature.arg_types)) \
                if positions and isinstance(signature, CallableType) else None
        return self._generic[fullname]

    def _definition(self, fullname: str) -> object:
        """The node a function's or a method's fullname names."""
        symbol = self.lookup_fully_qualified(fullname) if "." in fullname else None
        if symbol is not None:
            return symbol.node
        owner, _, name = fullname.rpartition(".")
        info = self.state.info(owner) if owner else None
        member = info.get(name) if info is not None else None
        return member.node if member is not None else None


def plugin(version: str) -> type[Plugin]:
    """mypy's entry point."""
    return VmMemoryPlugin



