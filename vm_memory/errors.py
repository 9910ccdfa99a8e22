"""The error hierarchy: every failure is a `GuestMemoryError` carrying its facts.

Addresses are kept as plain integers here (this module sits below the address types)
and shown in hex. Each error can be pickled, so it survives a trip to another process.
"""

from __future__ import annotations

from typing import Any


def _hex(value: int) -> str:
    return f"{value:#x}"


class GuestMemoryError(Exception):
    """Base class of every error this library raises on purpose."""

    _init_args: tuple[Any, ...] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self._init_args)


class AddressOutOfRange(GuestMemoryError, ValueError):
    """A value given as a 64-bit address or offset is negative or at least 2**64."""

    def __init__(self, value: int, what: str = "address") -> None:
        self.value = value
        self.what = what
        self._init_args = (value, what)
        super().__init__(f"{what} {value!r} is outside the 64-bit range [0, 2**64)")


class AddressOverflow(GuestMemoryError, OverflowError):
    """Address arithmetic went past 2**64 - 1 or below 0."""

    def __init__(self, base: int, operation: str, operand: int) -> None:
        self.base = base
        self.operation = operation
        self.operand = operand
        self._init_args = (base, operation, operand)
        super().__init__(
            f"{_hex(base)} {operation} {_hex(operand)} overflows the 64-bit address space"
        )


class InvalidGuestAddress(GuestMemoryError):
    """No region contains this guest address."""

    def __init__(self, address: int) -> None:
        self.address = address
        self._init_args = (address,)
        super().__init__(f"guest address {_hex(address)} is not backed by any region")


class InvalidRange(GuestMemoryError, ValueError):
    """A range is empty where it must not be, wraps past 2**64, or does not fit."""

    def __init__(self, address: int, length: int, reason: str) -> None:
        self.address = address
        self.length = length
        self.reason = reason
        self._init_args = (address, length, reason)
        super().__init__(f"invalid range [{_hex(address)}, +{_hex(length)}): {reason}")


class PartialBuffer(GuestMemoryError):
    """A slice access could not complete; `completed` bytes were moved (0: none at all).

    `available` is how many bytes from `address` on are backed before the hole or end.
    """

    def __init__(self, address: int, expected: int, completed: int, available: int) -> None:
        self.address = address
        self.expected = expected
        self.completed = completed
        self.available = available
        self._init_args = (address, expected, completed, available)
        super().__init__(
            f"access of {expected} bytes at {_hex(address)} moved {completed}: only "
            f"{available} bytes are backed before a hole or the end at "
            f"{_hex(address + available)}"
        )


class RegionOverlap(GuestMemoryError, ValueError):
    """Two regions given to one memory object overlap."""

    def __init__(self, first_start: int, first_length: int, second_start: int,
                 second_length: int) -> None:
        self.first_start = first_start
        self.first_length = first_length
        self.second_start = second_start
        self.second_length = second_length
        self._init_args = (first_start, first_length, second_start, second_length)
        super().__init__(
            f"region [{_hex(first_start)}, +{_hex(first_length)}) overlaps region "
            f"[{_hex(second_start)}, +{_hex(second_length)})"
        )


class NotByteValued(GuestMemoryError, TypeError):
    """A type cannot be copied to and from guest memory as plain bytes."""

    def __init__(self, type_name: str, reason: str) -> None:
        self.type_name = type_name
        self.reason = reason
        self._init_args = (type_name, reason)
        super().__init__(f"{type_name} is not ByteValued: {reason}")


class ValueOutOfRange(GuestMemoryError, ValueError):
    """A value does not fit the type it is written as."""

    def __init__(self, type_name: str, value: object, reason: str) -> None:
        self.type_name = type_name
        self.value = value
        self.reason = reason
        self._init_args = (type_name, value, reason)
        super().__init__(f"{value!r} cannot be stored as {type_name}: {reason}")


class MisalignedAddress(GuestMemoryError, ValueError):
    """An address is not a multiple of the alignment the access needs."""

    def __init__(self, address: int, alignment: int, type_name: str,
                 space: str = "guest") -> None:
        self.address = address
        self.alignment = alignment
        self.type_name = type_name
        self.space = space
        self._init_args = (address, alignment, type_name, space)
        super().__init__(
            f"{space} address {_hex(address)} is not aligned to {alignment} bytes "
            f"as {type_name} requires"
        )


class ReadOnlyRegion(GuestMemoryError):
    """A store reached a region mapped read-only; nothing was written."""

    def __init__(self, address: int, length: int) -> None:
        self.address = address
        self.length = length
        self._init_args = (address, length)
        super().__init__(
            f"write of {length} bytes at {_hex(address)} refused: the region is read-only"
        )


class NotAtomicAccess(GuestMemoryError, TypeError):
    """An atomic operation was asked of a type that is not an atomic integer or bool."""

    def __init__(self, type_name: str, reason: str) -> None:
        self.type_name = type_name
        self.reason = reason
        self._init_args = (type_name, reason)
        super().__init__(f"{type_name} cannot be accessed atomically: {reason}")


class AtomicWidthUnsupported(GuestMemoryError):
    """This host cannot access `size` bytes atomically without a lock."""

    def __init__(self, type_name: str, size: int) -> None:
        self.type_name = type_name
        self.size = size
        self._init_args = (type_name, size)
        super().__init__(
            f"{type_name} ({size} bytes) is not lock-free on this host; a lock-based "
            f"fallback would not be atomic against other processes or guest vCPUs"
        )


class AtomicAccessUnsupported(GuestMemoryError):
    """The region behind an address cannot perform atomic operations."""

    def __init__(self, address: int, region_kind: str, reason: str) -> None:
        self.address = address
        self.region_kind = region_kind
        self.reason = reason
        self._init_args = (address, region_kind, reason)
        super().__init__(
            f"atomic access at {_hex(address)} is not possible on a {region_kind}: {reason}"
        )


class AtomicLibraryMissing(GuestMemoryError):
    """The C runtime's atomic library (libatomic) could not be loaded."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        self._init_args = (detail,)
        super().__init__(
            "atomic operations need libatomic.so.1, which could not be loaded "
            f"({detail}); install it: Debian/Ubuntu `apt-get install libatomic1`, "
            "Fedora `dnf install libatomic`, Alpine `apk add libatomic`"
        )


class InvalidOrdering(GuestMemoryError, ValueError):
    """A memory ordering that C11 and Rust forbid for this operation."""

    def __init__(self, operation: str, ordering: str, reason: str) -> None:
        self.operation = operation
        self.ordering = ordering
        self.reason = reason
        self._init_args = (operation, ordering, reason)
        super().__init__(f"{ordering} is not a valid ordering for {operation}: {reason}")


class NoHostAddress(GuestMemoryError):
    """The region behind an address has no host memory to point at."""

    def __init__(self, address: int, region_kind: str) -> None:
        self.address = address
        self.region_kind = region_kind
        self._init_args = (address, region_kind)
        super().__init__(f"guest address {_hex(address)} is in a {region_kind}, "
                         "which has no host address")


class MappingError(GuestMemoryError, OSError):
    """Creating or mapping a region's backing memory failed."""

    def __init__(self, size: int, reason: str) -> None:
        self.size = size
        self.reason = reason
        self._init_args = (size, reason)
        super().__init__(f"cannot map {size} bytes: {reason}")


class MappingPastEof(MappingError):
    """A file is shorter than the range asked to be mapped from it (touching it: SIGBUS)."""

    def __init__(self, size: int, file_offset: int, file_size: int) -> None:
        self.file_offset = file_offset
        self.file_size = file_size
        super().__init__(size, f"the file has {file_size} bytes, fewer than offset "
                               f"{file_offset} + size {size}")
        self._init_args = (size, file_offset, file_size)


class RegionInUse(GuestMemoryError):
    """An explicit close of a region that a memory object (or a view of one) still uses."""

    def __init__(self, start: int, users: int, exported_buffers: bool = False) -> None:
        self.start = start
        self.users = users
        self.exported_buffers = exported_buffers
        self._init_args = (start, users, exported_buffers)
        holders = "buffers exported from it (as_memoryview)" if exported_buffers else \
            f"{users} memory object(s) or views"
        super().__init__(f"region at {_hex(start)} is still used by {holders}; "
                         "drop them before closing it")


class AlignedAddressConstruction(GuestMemoryError, TypeError):
    """`AlignedGuestAddress` was called directly instead of through a checked constructor."""

    def __init__(self) -> None:
        super().__init__(
            "AlignedGuestAddress cannot be constructed directly; use "
            "AlignedGuestAddress.new(T, address), .try_new(T, address), .align_up(T, address) "
            "or .align_down(T, address)"
        )


class InvalidArgumentType(GuestMemoryError, TypeError):
    """An argument of the wrong Python type (an int where an address is needed, a float
    where an integer is, a non-contiguous buffer...); nothing was touched."""

    def __init__(self, what: str, expected: str, got: object) -> None:
        self.what = what
        self.expected = expected
        self.got = type(got).__name__
        """The type name of what was given (the value itself may not be picklable)."""
        super().__init__(f"{what} must be {expected}, not {self.got}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_argument_type, (self.what, self.expected, self.got))


def _rebuild_argument_type(what: str, expected: str, got: str) -> InvalidArgumentType:
    error = InvalidArgumentType(what, expected, None)
    error.got = got
    error.args = (f"{what} must be {expected}, not {got}",)
    return error


class InvalidAlignment(GuestMemoryError, ValueError):
    """An alignment that is not a power of two (or is zero)."""

    def __init__(self, alignment: int) -> None:
        self.alignment = alignment
        self._init_args = (alignment,)
        super().__init__(f"alignment {alignment} is not a power of two")


class InvalidGuestValue(GuestMemoryError, ValueError):
    """The bytes in guest memory are not a valid value of the type read (a guest wrote
    them, so they are hostile input)."""

    def __init__(self, address: int, type_name: str, reason: str) -> None:
        self.address = address
        self.type_name = type_name
        self.reason = reason
        self._init_args = (address, type_name, reason)
        super().__init__(f"the bytes at {_hex(address)} are not a valid {type_name}: {reason}")


class NoMemoryRegion(GuestMemoryError, ValueError):
    """A memory was built from no ranges at all (use `GuestMemory(())` for an empty start
    that hot-plug fills)."""

    def __init__(self) -> None:
        super().__init__("no memory region was given")


class UnsealedMemory(MappingError):
    """A file received from a peer is not sealed against shrinking: the peer could
    truncate it under the mapping, and the next access would be SIGBUS."""

    def __init__(self, size: int, detail: str) -> None:
        self.detail = detail
        super().__init__(size, f"the file is not sealed against shrinking ({detail}); a "
                               "peer that truncates it would kill this process with SIGBUS. "
                               "Send a memfd sealed with F_SEAL_SHRINK, or pass "
                               "trust_unsealed=True for a peer you trust")
        self._init_args = (size, detail)


class MalformedMemoryTable(GuestMemoryError, ValueError):
    """A memory table received from a peer is not what `send_memory` sends; every fd that
    came with it has been closed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self._init_args = (reason,)
        super().__init__(f"malformed memory table: {reason}")


class NotShareable(GuestMemoryError):
    """A region has no file behind it (anonymous memory), so it cannot be shared."""

    def __init__(self, start: int) -> None:
        self.start = start
        self._init_args = (start,)
        super().__init__(f"region at {_hex(start)} is anonymous memory with no fd to share; "
                         "build shared memory with from_ranges_memfd or from a file")


class IndexOutOfRange(GuestMemoryError, IndexError):
    """An index outside a volatile array (an IndexError too, so a loop over it ends)."""

    def __init__(self, index: int, count: int) -> None:
        self.index = index
        self.count = count
        self._init_args = (index, count)
        super().__init__(f"index {index} outside an array of {count}")


class DeviceError(GuestMemoryError):
    """A device model behind a `DeviceRegion` answered wrongly (e.g. a short read)."""

    def __init__(self, address: int, length: int, reason: str) -> None:
        self.address = address
        self.length = length
        self.reason = reason
        self._init_args = (address, length, reason)
        super().__init__(f"device access of {length} bytes at {_hex(address)}: {reason}")


class RegionIoError(GuestMemoryError, OSError):
    """The file or device behind a region failed an I/O (`errno` and `strerror` are the
    system's); an all-or-nothing access that meets it leaves memory as it was."""

    def __init__(self, address: int, length: int, errno: int, strerror: str) -> None:
        self.address = address
        self.length = length
        self._init_args = (address, length, errno, strerror)
        OSError.__init__(self, errno, f"I/O of {length} bytes at guest {_hex(address)} "
                                      f"failed: {strerror}")

    @classmethod
    def of(cls, address: int, length: int, error: OSError) -> RegionIoError:
        """The error for an `OSError` met by an I/O of `length` bytes at `address`."""
        return cls(address, length, error.errno or 0, error.strerror or str(error))
