"""The plugin's copies of run-time facts equal the run time's own.

The plugin cannot import vm_memory while mypy runs (it would load the whole library into
the type checker), so it keeps the facts by name; these tests fail when either side
drifts: the ordering rules, the AtomicAccess types, and the ctypes types refused as not
plain data.
"""

from __future__ import annotations

import ctypes
from typing import Any, Final

import pytest
from vm_memory_mypy import names
from vm_memory_mypy.ctypes_model import ATOMIC_TYPES, NOT_BYTE_VALUED

from vm_memory import is_atomic_access
from vm_memory.byte_valued import _REFUSED_CODES  # pyright: ignore[reportPrivateUsage]
from vm_memory.ordering import (
    FAILURE_ORDERINGS,
    LOAD_ORDERINGS,
    READ_MODIFY_WRITE_ORDERINGS,
    STORE_ORDERINGS,
    Ordering,
)


# Every ctypes scalar class the plugin could be asked about (aliases such as c_int8 are
# the same class as another name).
def _scalars() -> list[type[Any]]:
    simple: type[Any] = ctypes._SimpleCData  # pyright: ignore[reportPrivateUsage]
    found: set[type[Any]] = {value for value in vars(ctypes).values()
                             if isinstance(value, type) and issubclass(value, simple)
                             and value is not simple}
    return sorted(found, key=lambda cls: cls.__name__)


CTYPES_SCALARS: Final = _scalars()


def member_names(orderings: frozenset[Ordering]) -> frozenset[str]:
    return frozenset(ordering.name for ordering in orderings)


@pytest.mark.parametrize(("plugin", "runtime"), [
    (names.LOADS, LOAD_ORDERINGS), (names.STORES, STORE_ORDERINGS),
    (names.READ_MODIFY_WRITES, READ_MODIFY_WRITE_ORDERINGS),
    (names.FAILURES, FAILURE_ORDERINGS),
], ids=["loads", "stores", "read_modify_writes", "failures"])
def test_ordering_rules_are_the_run_times(plugin: frozenset[str],
                                          runtime: frozenset[Ordering]) -> None:
    assert plugin == member_names(runtime)


def test_every_ordering_parameter_uses_one_of_the_rules() -> None:
    rules = {names.LOADS, names.STORES, names.READ_MODIFY_WRITES, names.FAILURES}
    for parameters in names.GUEST_MEMORY_ATOMICS.values():
        assert set(parameters.values()) <= rules


def plugin_name(cls: type) -> str:
    """The fullname typeshed gives a ctypes class (c_int8 is reported as c_byte...)."""
    return f"ctypes.{cls.__name__}"


def test_atomic_types_are_the_run_times() -> None:
    runtime = {plugin_name(cls) for cls in CTYPES_SCALARS if is_atomic_access(cls)}
    # On this host some names are the same class (c_int64 is c_long on LP64): compare
    # by the classes the run time accepts, mapped through the plugin's names.
    accepted = {name for name in ATOMIC_TYPES
                if is_atomic_access(getattr(ctypes, name.removeprefix("ctypes.")))}
    assert accepted == ATOMIC_TYPES
    assert runtime <= ATOMIC_TYPES
    refused = {plugin_name(cls) for cls in CTYPES_SCALARS if not is_atomic_access(cls)}
    assert not refused & ATOMIC_TYPES


def test_refused_ctypes_are_the_run_times() -> None:
    by_code = {getattr(ctypes, name.removeprefix("ctypes."))._type_: name
               for name in NOT_BYTE_VALUED}
    assert set(by_code) == set(_REFUSED_CODES)
