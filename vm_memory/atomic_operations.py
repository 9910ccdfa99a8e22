"""The atomic operations: one table entry each, read by every path.

An entry says everything any path needs to know about an operation: the orderings it
allows, how many values it takes, whether it stores (so a read-only region refuses it),
whether `c_bool` has it, the libatomic function behind it and how that function is
called, and what it computes (`apply`, used where no hardware instruction does the work:
device regions, and `c_bool` read-modify-writes). The fast paths, the general path and
the region primitives are all derived from it, so adding an operation is one entry here
plus the public method that names it.

`c_bool` rule: a guest may store any byte in a bool. Every byte other than 0 reads as
`True`; stores write 0 or 1 only; read-modify-writes on a bool are a compare-exchange
loop on the byte, so `compare_exchange(flag, True, False)` succeeds on a stored 2 (and a
CAS loop always ends), on host memory and device regions alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from vm_memory.ordering import (
    FAILURE_ORDERINGS,
    LOAD_ORDERINGS,
    READ_MODIFY_WRITE_ORDERINGS,
    STORE_ORDERINGS,
    Ordering,
)

Apply = Callable[[Any, tuple[int, ...]], tuple[int | None, Any]]
"""(old value, operands) -> (value to store, or None to store nothing; the result)."""

Shape = (Literal["load"] | Literal["store"] | Literal["read-modify-write"]
         | Literal["compare-exchange"])
"""How the libatomic function is called: (ptr, order) -> T; (ptr, T, order);
(ptr, T, order) -> T; (ptr, T* expected, T desired, order, failure order) -> bool."""


def _arithmetic(function: Callable[[int, int], int]) -> Apply:
    def apply(old: Any, operands: tuple[int, ...]) -> tuple[int | None, Any]:
        return function(int(old), operands[0]), old
    return apply


def _compare_exchange(old: Any, operands: tuple[int, ...]) -> tuple[int | None, Any]:
    expected, desired = operands
    if old == expected:
        return desired, (True, old)
    return None, (False, old)


@dataclass(frozen=True, slots=True)
class AtomicOperation:
    """One atomic operation, as every path sees it."""

    name: str
    """The `GuestMemory` method."""
    summary: str
    """What the method does (its docstring)."""
    access: str
    """What it is, for messages: 'a load', 'a store', 'a read-modify-write'."""
    orderings: frozenset[Ordering]
    """The orderings allowed (the success side of a compare-exchange)."""
    failure_orderings: frozenset[Ordering]
    """For a compare-exchange: the orderings its failure side allows; else empty."""
    operand_count: int
    """How many values the caller passes (expected and desired count two)."""
    stores: bool
    """Whether it may write (a read-only region refuses it, whatever the outcome)."""
    defined_for_bool: bool
    host_function: str
    """libatomic's `__atomic_<host_function>_N`."""
    shape: Shape
    apply: Apply
    """What it computes from the old value: the value to store (None: nothing) and the
    result returned to the caller."""

    @property
    def ordering_members(self) -> tuple[Ordering, ...]:
        """The allowed orderings as a tuple, for identity tests on the hot paths."""
        return tuple(sorted(self.orderings))


def _operation(name: str, summary: str, access: str, orderings: frozenset[Ordering],
               operand_count: int, host_function: str, shape: Shape, apply: Apply, *,
               stores: bool = True, defined_for_bool: bool = True,
               failure_orderings: frozenset[Ordering] = frozenset()) -> AtomicOperation:
    return AtomicOperation(name, summary, access, orderings, failure_orderings, operand_count,
                           stores, defined_for_bool, host_function, shape, apply)


_RMW: Final = "a read-modify-write"
_ALL: Final = READ_MODIFY_WRITE_ORDERINGS

READ: Final = _operation(
    "read_atomic", "One hardware-atomic load with `order` (RELAXED, ACQUIRE or SEQ_CST).",
    "a load", LOAD_ORDERINGS, 0, "load", "load", lambda old, _: (None, old), stores=False)
WRITE: Final = _operation(
    "write_atomic", "One hardware-atomic store with `order` (RELAXED, RELEASE or SEQ_CST).",
    "a store", STORE_ORDERINGS, 1, "store", "store", lambda _, operands: (operands[0], None))
SWAP: Final = _operation(
    "swap", "Atomically store `value` and return the previous value.",
    _RMW, _ALL, 1, "exchange", "read-modify-write", lambda old, operands: (operands[0], old))
COMPARE_EXCHANGE: Final = _operation(
    "compare_exchange",
    "Atomically store `desired` if the value is `expected`.\n\nReturns (whether it was "
    "stored, the value found). A read-only region refuses even a compare-exchange that "
    "would fail: the instruction writes either way.",
    _RMW, _ALL, 2, "compare_exchange", "compare-exchange", _compare_exchange,
    failure_orderings=FAILURE_ORDERINGS)
FETCH_ADD: Final = _operation(
    "fetch_add", "Atomically add `value` (wrapping at the type's width); return the old value.",
    _RMW, _ALL, 1, "fetch_add", "read-modify-write", _arithmetic(lambda old, value: old + value),
    defined_for_bool=False)
FETCH_SUB: Final = _operation(
    "fetch_sub", "Atomically subtract `value` (wrapping); return the old value.",
    _RMW, _ALL, 1, "fetch_sub", "read-modify-write", _arithmetic(lambda old, value: old - value),
    defined_for_bool=False)
FETCH_AND: Final = _operation(
    "fetch_and", "Atomically AND `value` in; return the old value.",
    _RMW, _ALL, 1, "fetch_and", "read-modify-write", _arithmetic(lambda old, value: old & value))
FETCH_OR: Final = _operation(
    "fetch_or", "Atomically OR `value` in; return the old value.",
    _RMW, _ALL, 1, "fetch_or", "read-modify-write", _arithmetic(lambda old, value: old | value))
FETCH_XOR: Final = _operation(
    "fetch_xor", "Atomically XOR `value` in; return the old value.",
    _RMW, _ALL, 1, "fetch_xor", "read-modify-write", _arithmetic(lambda old, value: old ^ value))

OPERATIONS: Final = {operation.name: operation for operation in (
    READ, WRITE, SWAP, COMPARE_EXCHANGE, FETCH_ADD, FETCH_SUB, FETCH_AND, FETCH_OR, FETCH_XOR)}
"""Every atomic operation, by its `GuestMemory` method name."""
