"""The plugin's error codes: each check reports under its own, so `# type: ignore[code]`
or `disable_error_code` silences exactly one (mypy registers a code when it is built)."""

from __future__ import annotations

from typing import Final

from mypy.errorcodes import ErrorCode

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
FIELD_TYPE: Final = ErrorCode(
    "vm-memory-field-type",
    "A Structure field annotation that disagrees with its `_fields_` type", CATEGORY)

ALL: Final = (ALIGNED_CONSTRUCTION, MISALIGNED, ATOMIC_TYPE, ATOMIC_WIDTH, ORDERING,
              BYTE_VALUED, FIELD_TYPE)
