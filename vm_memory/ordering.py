"""Memory orderings of atomic operations, as in C11 and Rust, with their validity rules."""

from __future__ import annotations

import enum
from typing import Final

from vm_memory.errors import InvalidOrdering


class Ordering(enum.IntEnum):
    """C11 memory orderings; the values are the C `__ATOMIC_*` constants."""

    RELAXED = 0
    ACQUIRE = 2
    RELEASE = 3
    ACQ_REL = 4
    SEQ_CST = 5


LOAD_ORDERINGS: Final = frozenset({Ordering.RELAXED, Ordering.ACQUIRE, Ordering.SEQ_CST})
"""Orderings a load may use: a load cannot release."""
STORE_ORDERINGS: Final = frozenset({Ordering.RELAXED, Ordering.RELEASE, Ordering.SEQ_CST})
"""Orderings a store may use: a store cannot acquire."""
READ_MODIFY_WRITE_ORDERINGS: Final = frozenset(Ordering)
"""Orderings a read-modify-write (swap, fetch_*, compare-exchange success) may use."""
FAILURE_ORDERINGS: Final = LOAD_ORDERINGS
"""Orderings the failure side of a compare-exchange may use: a failure is a load."""

# The same sets as tuples, for the hot paths: `x in tuple` tries identity first, while
# hashing an enum member for a set lookup runs Python code.
LOAD_ORDERING_MEMBERS: Final = tuple(sorted(LOAD_ORDERINGS))
STORE_ORDERING_MEMBERS: Final = tuple(sorted(STORE_ORDERINGS))
READ_MODIFY_WRITE_ORDERING_MEMBERS: Final = tuple(Ordering)


def check_ordering(operation: str, ordering: object, allowed: frozenset[Ordering]) -> int:
    """Return `ordering` as its C value if allowed for `operation`, else raise."""
    if ordering in allowed and isinstance(ordering, Ordering):
        return int(ordering)
    if not isinstance(ordering, Ordering):
        raise InvalidOrdering(operation, repr(ordering), "orderings are Ordering members")
    kind = "a load" if allowed is LOAD_ORDERINGS else (
        "a store" if allowed is STORE_ORDERINGS else "a compare-exchange failure")
    raise InvalidOrdering(
        operation, ordering.name,
        f"{operation} is {kind}, which allows only "
        + ", ".join(o.name for o in sorted(allowed)),
    )
