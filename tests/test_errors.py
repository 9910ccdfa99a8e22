"""Every error class: its facts, its message, its base classes, and a pickle round trip.

The table below must name every `GuestMemoryError` subclass in `vm_memory.errors`; a new
error without an entry fails `test_every_error_class_is_covered`.
"""

from __future__ import annotations

import inspect
import pickle
from dataclasses import dataclass
from typing import Any

import pytest

import vm_memory
from vm_memory import errors
from vm_memory.errors import (
    AddressOutOfRange,
    AddressOverflow,
    AlignedAddressConstruction,
    AtomicAccessUnsupported,
    AtomicLibraryMissing,
    AtomicWidthUnsupported,
    DeviceError,
    GuestMemoryError,
    IndexOutOfRange,
    InvalidAlignment,
    InvalidArgumentType,
    InvalidGuestAddress,
    InvalidGuestValue,
    InvalidOrdering,
    InvalidRange,
    MalformedMemoryTable,
    MappingError,
    MappingPastEof,
    MisalignedAddress,
    NoHostAddress,
    NoMemoryRegion,
    NotAtomicAccess,
    NotByteValued,
    NotShareable,
    PartialBuffer,
    ReadOnlyRegion,
    RegionInUse,
    RegionIoError,
    RegionOverlap,
    UnsealedMemory,
    ValueOutOfRange,
)

TOP = 2**64 - 1


@dataclass(frozen=True)
class ErrorCase:
    """How to build one error, the facts it must carry, and what its message must say."""

    error_type: type[GuestMemoryError]
    args: tuple[Any, ...]
    facts: dict[str, Any]
    builtin_base: type[Exception] | None
    """The builtin exception it also is (callers catching ValueError etc.), or None."""
    message_parts: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.error_type.__name__


CASES = [
    ErrorCase(AddressOutOfRange, (-1, "offset"), {"value": -1, "what": "offset"}, ValueError,
              ("offset", "-1", "2**64")),
    ErrorCase(AddressOutOfRange, (2**64, "address"), {"value": 2**64, "what": "address"},
              ValueError, (str(2**64),)),
    ErrorCase(AddressOverflow, (TOP, "+", 1), {"base": TOP, "operation": "+", "operand": 1},
              OverflowError, ("0xffffffffffffffff", "+", "0x1", "overflow")),
    ErrorCase(InvalidGuestAddress, (0xFEE0_0000,), {"address": 0xFEE0_0000}, None,
              ("0xfee00000", "not backed")),
    ErrorCase(InvalidRange, (TOP, 2, "the range passes 2**64"),
              {"address": TOP, "length": 2, "reason": "the range passes 2**64"}, ValueError,
              ("0xffffffffffffffff", "0x2", "passes 2**64")),
    ErrorCase(PartialBuffer, (0x1000, 64, 0, 16),
              {"address": 0x1000, "expected": 64, "completed": 0, "available": 16}, None,
              ("64 bytes", "0x1000", "moved 0", "16 bytes", "0x1010")),
    ErrorCase(RegionOverlap, (0x1000, 0x2000, 0x2000, 0x1000),
              {"first_start": 0x1000, "first_length": 0x2000, "second_start": 0x2000,
               "second_length": 0x1000}, ValueError,
              ("[0x1000, +0x2000)", "[0x2000, +0x1000)", "overlaps")),
    ErrorCase(NotByteValued, ("Desc", "field 'next' (LP_Desc) is not: a pointer"),
              {"type_name": "Desc", "reason": "field 'next' (LP_Desc) is not: a pointer"},
              TypeError, ("Desc", "not ByteValued", "'next'")),
    ErrorCase(ValueOutOfRange, ("c_uint8", 256, "not in [0, 255]"),
              {"type_name": "c_uint8", "value": 256, "reason": "not in [0, 255]"}, ValueError,
              ("256", "c_uint8", "[0, 255]")),
    ErrorCase(MisalignedAddress, (0x1002, 4, "c_uint32", "host"),
              {"address": 0x1002, "alignment": 4, "type_name": "c_uint32", "space": "host"},
              ValueError, ("host address", "0x1002", "4 bytes", "c_uint32")),
    ErrorCase(ReadOnlyRegion, (0x3000, 8), {"address": 0x3000, "length": 8}, None,
              ("8 bytes", "0x3000", "read-only")),
    ErrorCase(NotAtomicAccess, ("c_double", "not an integer"),
              {"type_name": "c_double", "reason": "not an integer"}, TypeError,
              ("c_double", "atomically", "not an integer")),
    ErrorCase(AtomicWidthUnsupported, ("c_int128", 16), {"type_name": "c_int128", "size": 16},
              None, ("c_int128", "16 bytes", "lock-free")),
    ErrorCase(AtomicAccessUnsupported, (0x4000, "file region", "no host memory"),
              {"address": 0x4000, "region_kind": "file region", "reason": "no host memory"},
              None, ("0x4000", "file region", "no host memory")),
    ErrorCase(AtomicLibraryMissing, ("libatomic.so.1: cannot open shared object file",),
              {"detail": "libatomic.so.1: cannot open shared object file"}, None,
              ("libatomic.so.1", "cannot open", "libatomic1", "apk add libatomic")),
    ErrorCase(InvalidOrdering, ("read_atomic", "RELEASE", "a load cannot release"),
              {"operation": "read_atomic", "ordering": "RELEASE",
               "reason": "a load cannot release"}, ValueError,
              ("RELEASE", "read_atomic", "a load cannot release")),
    ErrorCase(NoHostAddress, (0x5000, "file region"),
              {"address": 0x5000, "region_kind": "file region"}, None,
              ("0x5000", "file region", "no host address")),
    ErrorCase(MappingError, (4096, "the file has 100 bytes"),
              {"size": 4096, "reason": "the file has 100 bytes"}, OSError,
              ("4096 bytes", "the file has 100 bytes")),
    ErrorCase(MappingPastEof, (8192, 4096, 10000),
              {"size": 8192, "file_offset": 4096, "file_size": 10000}, OSError,
              ("8192 bytes", "10000 bytes", "offset 4096")),
    ErrorCase(RegionInUse, (0x10_0000, 2), {"start": 0x10_0000, "users": 2}, None,
              ("0x100000", "2 memory")),
    ErrorCase(AlignedAddressConstruction, (), {}, TypeError,
              ("AlignedGuestAddress.new", "try_new", "align_up", "align_down")),
    ErrorCase(InvalidArgumentType, ("read_slice's buffer", "a writable buffer", b"x"),
              {"what": "read_slice's buffer", "expected": "a writable buffer",
               "got": "bytes"}, TypeError, ("read_slice's buffer", "writable", "bytes")),
    ErrorCase(InvalidAlignment, (3000,), {"alignment": 3000}, ValueError,
              ("3000", "power of two")),
    ErrorCase(InvalidGuestValue, (0x2000, "c_wchar", "character out of range"),
              {"address": 0x2000, "type_name": "c_wchar", "reason": "character out of range"},
              ValueError, ("0x2000", "c_wchar", "out of range")),
    ErrorCase(NoMemoryRegion, (), {}, ValueError, ("no memory region",)),
    ErrorCase(UnsealedMemory, (4096, "not a memfd"), {"size": 4096, "detail": "not a memfd"},
              OSError, ("F_SEAL_SHRINK", "SIGBUS", "trust_unsealed", "not a memfd")),
    ErrorCase(MalformedMemoryTable, ("a row must have exactly the keys",),
              {"reason": "a row must have exactly the keys"}, ValueError,
              ("malformed memory table", "keys")),
    ErrorCase(NotShareable, (0x1000,), {"start": 0x1000}, None,
              ("0x1000", "anonymous", "from_ranges_memfd")),
    ErrorCase(DeviceError, (0x3000, 8, "the device returned 4 bytes"),
              {"address": 0x3000, "length": 8, "reason": "the device returned 4 bytes"}, None,
              ("0x3000", "8 bytes", "returned 4 bytes")),
    ErrorCase(IndexOutOfRange, (5, 2), {"index": 5, "count": 2}, IndexError,
              ("index 5", "array of 2")),
    ErrorCase(RegionIoError, (0x4000, 16, 27, "File too large"),
              {"address": 0x4000, "length": 16, "errno": 27}, OSError,
              ("0x4000", "16 bytes", "File too large")),
]


def _error_classes() -> set[type[GuestMemoryError]]:
    return {value for _, value in inspect.getmembers(errors, inspect.isclass)
            if issubclass(value, GuestMemoryError) and value is not GuestMemoryError}


def test_every_error_class_is_covered() -> None:
    assert {case.error_type for case in CASES} == _error_classes()


def test_every_error_class_is_exported() -> None:
    """Users catch them by name from the package."""
    for error_type in _error_classes() | {GuestMemoryError}:
        assert getattr(vm_memory, error_type.__name__) is error_type
        assert error_type.__name__ in vm_memory.__all__


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_error_carries_its_facts(case: ErrorCase) -> None:
    error = case.error_type(*case.args)
    for name, value in case.facts.items():
        assert getattr(error, name) == value, name


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_error_message_states_the_facts(case: ErrorCase) -> None:
    message = str(case.error_type(*case.args))
    for part in case.message_parts:
        assert part in message, (part, message)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_error_bases(case: ErrorCase) -> None:
    """One hierarchy under GuestMemoryError, plus the builtin a caller would expect."""
    error = case.error_type(*case.args)
    assert isinstance(error, GuestMemoryError)
    assert isinstance(error, Exception)
    builtins = {ValueError, TypeError, OverflowError, OSError, IndexError, PermissionError,
                RuntimeError, ImportError}
    expected: set[type[Exception]] = set() if case.builtin_base is None \
        else {case.builtin_base}
    # OverflowError is an ArithmeticError; only the most specific builtin is listed.
    assert {base for base in builtins if isinstance(error, base)} == expected


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_error_survives_pickling(case: ErrorCase) -> None:
    """Errors cross process boundaries (multiprocessing, a device back-end's worker)."""
    error = case.error_type(*case.args)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(error, protocol))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.args == error.args
        for name, value in case.facts.items():
            assert getattr(copy, name) == value, name


def test_mapping_error_is_not_mistaken_for_an_errno() -> None:
    """OSError reads two positional arguments as (errno, strerror); the facts must not
    leak into those."""
    error = MappingError(4096, "no memory")
    assert error.errno is None
    assert error.strerror is None
    assert error.args == (str(error),)


def test_mapping_past_eof_is_a_mapping_error() -> None:
    """Callers catching the general MappingError also catch the specific one."""
    assert isinstance(MappingPastEof(1, 0, 0), MappingError)


def test_error_raised_by_the_library_is_the_documented_one() -> None:
    """A spot check that the facts survive a real raise: an out-of-range address."""
    with pytest.raises(AddressOutOfRange) as raised:
        vm_memory.GuestAddress(-5)
    assert raised.value.value == -5
    assert raised.value.what == "address"
