"""What every check reads: the target, and the plugin's lookup of fully qualified names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mypy.nodes import SymbolTableNode, TypeInfo
from mypy.plugin import MethodContext
from mypy.types import Type

from vm_memory_mypy.ctypes_model import field_alignment, scalar_alignment
from vm_memory_mypy.fields import field_types, pack_of
from vm_memory_mypy.targets import Target
from vm_memory_mypy.typeutil import class_of, innermost_element, is_known_scalar, scalar_fullname


@dataclass
class State:
    """Shared by the checks of one mypy run."""

    target: Target
    lookup: Callable[[str], SymbolTableNode | None]
    widened_calls: set[int] = field(default_factory=set[int])
    """Atomic calls whose signature `checks.atomics` widened: mypy no longer checks
    a c_bool address's values there, the atomic check does."""

    def info(self, fullname: str) -> TypeInfo | None:
        symbol = self.lookup(fullname)
        return symbol.node if symbol is not None and isinstance(symbol.node, TypeInfo) \
            else None

    def alignment(self, info: TypeInfo) -> int | None:
        """The alignment an AlignedGuestAddress of `info` needs on the target (None if
        the plugin cannot tell)."""
        fullname = scalar_fullname(info)
        if fullname is not None:
            return scalar_alignment(fullname, self.target)
        fields = field_types(info)
        if not fields:
            return None
        alignments = [self.field_alignment(field) for field in fields]
        if any(alignment is None for alignment in alignments):
            return None
        best = max(alignment for alignment in alignments if alignment is not None)
        pack = pack_of(info)
        return min(best, pack) if pack else best

    def type_alignment(self, typ: Type) -> int | None:
        """The alignment an AlignedGuestAddress of the type `typ` names needs: an array's
        is its element's C alignment (the run time's `ctypes.alignment`), through arrays
        of arrays."""
        element = innermost_element(typ)
        if element is None:
            info = class_of(typ)
            return self.alignment(info) if info is not None else None
        info = class_of(element)
        return self.class_field_alignment(info) if info is not None else None

    def field_alignment(self, fullname: str) -> int | None:
        if is_known_scalar(fullname):  # its size is the target's: no lookup
            return field_alignment(fullname, self.target)
        info = self.info(fullname)
        return self.class_field_alignment(info) if info is not None else None

    def class_field_alignment(self, info: TypeInfo) -> int | None:
        """Alignment of `info` as a Structure field or an array element."""
        scalar = scalar_fullname(info)
        if scalar is not None:
            return field_alignment(scalar, self.target)
        return self.alignment(info)


MethodHook = Callable[[State, MethodContext], Type]
"""A check of one method: returns the call's type (the one mypy inferred, or better)."""
