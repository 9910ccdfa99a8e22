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
"""Orderings the failure side of a compare-exchange may use: it stores nothing, so it
cannot release."""


def check_ordering(operation: str, ordering: object, allowed: frozenset[Ordering],
                   access: str) -> int:
    """Return `ordering` as its C value if it is an `Ordering` member allowed for
    `operation` (which is `access`: 'a load', 'a store'...), else raise `InvalidOrdering`.

    Members are admitted by type identity: a plain int equal to a member's value (which
    an IntEnum would compare equal) is refused, on every path.
    """
    if type(ordering) is Ordering:
        if ordering in allowed:
            return int(ordering)
        raise InvalidOrdering(
            operation, ordering.name,
            f"{operation} is {access}, which allows only "
            + ", ".join(member.name for member in sorted(allowed)))
    raise InvalidOrdering(operation, repr(ordering),
                          "orderings are Ordering members, not plain values")
