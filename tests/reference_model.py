"""A reference model of guest memory: one `bytearray` per region, in plain Python.

It shares no code with `vm_memory`: region lookup is a linear scan, spans are walked
byte range by byte range, and values are encoded and decoded with ctypes itself rather
than the library's codecs. Each operation either returns what the library must return
or raises `ExpectedError`, naming the error class the library must raise and the facts
it must carry. A failing operation changes nothing in the model.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vm_memory import (
    GuestMemoryError,
    InvalidGuestAddress,
    InvalidRange,
    PartialBuffer,
    ReadOnlyRegion,
)

ADDRESS_LIMIT = 1 << 64
"""The first address past the 64-bit guest physical address space."""


class ExpectedError(Exception):
    """The error the library must raise: its class and the facts it must carry."""

    def __init__(self, error_type: type[GuestMemoryError], **facts: object) -> None:
        super().__init__(error_type.__name__, facts)
        self.error_type = error_type
        self.facts = facts


@dataclass
class ModelRegion:
    """One region: where it starts, its bytes, and whether stores are refused."""

    start: int
    data: bytearray
    read_only: bool

    @property
    def end(self) -> int:
        """The first address after the region (2**64 for a region ending at the top)."""
        return self.start + len(self.data)


@dataclass(frozen=True)
class Piece:
    """The part of an access that falls in one region."""

    index: int
    offset: int
    count: int


@dataclass
class MemoryModel:
    """Guest memory as plain bytes: what every access path must agree with."""

    regions: list[ModelRegion] = field(default_factory=list[ModelRegion])

    def __post_init__(self) -> None:
        self.regions.sort(key=lambda region: region.start)
        for before, after in zip(self.regions, self.regions[1:], strict=False):
            assert before.end <= after.start, "the model is built from valid layouts only"
        assert all(region.end <= ADDRESS_LIMIT for region in self.regions)

    # ---- Layout --------------------------------------------------------------------

    def region_index(self, address: int) -> int | None:
        """The index of the region containing `address`, by linear scan."""
        for index, region in enumerate(self.regions):
            if region.start <= address < region.end:
                return index
        return None

    def pieces(self, address: int, length: int) -> list[Piece]:
        """The per-region parts of `[address, address + length)` up to the first hole."""
        result: list[Piece] = []
        while length > 0:
            index = self.region_index(address)
            if index is None:
                break
            region = self.regions[index]
            offset = address - region.start
            count = min(length, len(region.data) - offset)
            result.append(Piece(index, offset, count))
            address += count
            length -= count
        return result

    def backed_bytes(self, address: int, length: int) -> int:
        """How many bytes from `address` on (at most `length`) are backed, no hole between."""
        return sum(piece.count for piece in self.pieces(address, length))

    def last_addr(self) -> int:
        """The highest backed address."""
        if not self.regions:
            raise ExpectedError(InvalidGuestAddress, address=0)
        return self.regions[-1].end - 1

    def check_range(self, address: int, length: int) -> bool:
        """Whether every byte of `[address, address + length)` is backed."""
        return self.backed_bytes(address, length) == length

    def snapshot(self) -> tuple[bytes, ...]:
        """Every region's bytes, to compare with the real memory."""
        return tuple(bytes(region.data) for region in self.regions)

    # ---- Byte access ---------------------------------------------------------------

    def _collect(self, pieces: list[Piece]) -> bytes:
        return b"".join(bytes(self.regions[p.index].data[p.offset:p.offset + p.count])
                        for p in pieces)

    def _store(self, pieces: list[Piece], data: bytes) -> None:
        done = 0
        for piece in pieces:
            self.regions[piece.index].data[piece.offset:piece.offset + piece.count] = \
                data[done:done + piece.count]
            done += piece.count

    def _refuse_read_only(self, pieces: list[Piece]) -> None:
        for piece in pieces:
            region = self.regions[piece.index]
            if region.read_only:
                raise ExpectedError(ReadOnlyRegion, address=region.start + piece.offset,
                                    length=piece.count)

    @staticmethod
    def _refuse_past_top(address: int, length: int) -> None:
        if address + length > ADDRESS_LIMIT:
            raise ExpectedError(InvalidRange, address=address, length=length)

    def read(self, address: int, length: int) -> bytes:
        """`read`: the backed bytes up to the first hole; an unbacked start is an error."""
        self._refuse_past_top(address, length)
        if length == 0:
            return b""
        pieces = self.pieces(address, length)
        if not pieces:
            raise ExpectedError(InvalidGuestAddress, address=address)
        return self._collect(pieces)

    def write(self, address: int, data: bytes) -> int:
        """`write`: store up to the first hole; a read-only region reached refuses all."""
        self._refuse_past_top(address, len(data))
        if not data:
            return 0
        pieces = self.pieces(address, len(data))
        if not pieces:
            raise ExpectedError(InvalidGuestAddress, address=address)
        self._refuse_read_only(pieces)
        self._store(pieces, data)
        return sum(piece.count for piece in pieces)

    def read_slice(self, address: int, length: int) -> bytes:
        """`read_slice`/`read_bytes`: all `length` bytes, or nothing at all."""
        self._refuse_past_top(address, length)
        pieces = self.pieces(address, length)
        available = sum(piece.count for piece in pieces)
        if available < length:
            raise ExpectedError(PartialBuffer, address=address, expected=length,
                                completed=0, available=available)
        return self._collect(pieces)

    def write_slice(self, address: int, data: bytes) -> None:
        """`write_slice`: store all of `data`, or nothing at all."""
        self._refuse_past_top(address, len(data))
        pieces = self.pieces(address, len(data))
        available = sum(piece.count for piece in pieces)
        if available < len(data):
            raise ExpectedError(PartialBuffer, address=address, expected=len(data),
                                completed=0, available=available)
        self._refuse_read_only(pieces)
        self._store(pieces, data)

    # ---- Typed access --------------------------------------------------------------

    def read_obj_unaligned(self, address: int, ctype: type[Any]) -> bytes:
        """The bytes an unaligned typed read must decode (it may span regions)."""
        return self.read_slice(address, ctypes.sizeof(ctype))

    def write_obj_unaligned(self, address: int, ctype: type[Any], value: object) -> None:
        """Store the ctypes encoding of `value` across regions, all or nothing."""
        self.write_slice(address, encode(ctype, value))

    def _aligned_region(self, address: int, size: int) -> tuple[ModelRegion, int]:
        index = self.region_index(address)
        if index is None:
            raise ExpectedError(InvalidGuestAddress, address=address)
        region = self.regions[index]
        if address + size > region.end:
            raise ExpectedError(InvalidRange, address=address, length=size)
        return region, address - region.start

    def read_obj(self, address: int, ctype: type[Any]) -> bytes:
        """An aligned typed read: one region must hold the whole value."""
        size = ctypes.sizeof(ctype)
        region, offset = self._aligned_region(address, size)
        return bytes(region.data[offset:offset + size])

    def write_obj(self, address: int, ctype: type[Any], value: object) -> None:
        """An aligned typed store: one writable region must hold the whole value."""
        size = ctypes.sizeof(ctype)
        region, offset = self._aligned_region(address, size)
        if region.read_only:
            raise ExpectedError(ReadOnlyRegion, address=address, length=size)
        region.data[offset:offset + size] = encode(ctype, value)

    def __iter__(self) -> Iterator[ModelRegion]:
        return iter(self.regions)


# ---- Value encoding, through ctypes itself -----------------------------------------


def is_scalar(ctype: type[Any]) -> bool:
    """Whether `ctype` is a ctypes simple type (its instances have `.value`)."""
    return issubclass(ctype, ctypes._SimpleCData)  # pyright: ignore[reportPrivateUsage]


def natural_alignment(ctype: type[Any]) -> int:
    """The alignment an aligned access needs: the size of a scalar, else ctypes' own."""
    size = ctypes.sizeof(ctype)
    if is_scalar(ctype) and size & (size - 1) == 0:
        return size
    return ctypes.alignment(ctype)


def integer_bounds(ctype: type[Any]) -> tuple[int, int]:
    """The smallest and largest value of a ctypes integer type, found by probing it."""
    bits = ctypes.sizeof(ctype) * 8
    if ctype(-1).value == -1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def encode(ctype: type[Any], value: object) -> bytes:
    """The bytes ctypes stores for `value` as `ctype` (an instance is taken as is)."""
    instance: Any = value if isinstance(value, ctype) else ctype(value)
    return raw_bytes(instance)


def decode(ctype: type[Any], raw: bytes) -> object:
    """What a typed read of `raw` must return: a Python value, or a ctypes copy."""
    if not is_scalar(ctype):
        return ctype.from_buffer_copy(raw)
    if ctype is ctypes.c_bool:
        return raw != bytes(len(raw))
    value: object = ctype.from_buffer_copy(raw).value
    return value


def same_value(actual: object, expected: object) -> bool:
    """Equality that tells -0.0 from 0.0, counts NaN equal to NaN, compares copies by bytes."""
    if type(actual) is not type(expected):
        return False
    if isinstance(actual, float) and isinstance(expected, float):
        if math.isnan(actual) or math.isnan(expected):
            return math.isnan(actual) and math.isnan(expected)
        return actual == expected and math.copysign(1.0, actual) == math.copysign(1.0, expected)
    if is_aggregate(actual):
        return raw_bytes(actual) == raw_bytes(expected)
    return actual == expected


def is_aggregate(value: object) -> bool:
    """Whether `value` is a ctypes Structure, Union or Array instance."""
    return isinstance(value, ctypes.Structure | ctypes.Union | ctypes.Array)


def raw_bytes(instance: Any) -> bytes:
    """The bytes of a ctypes instance."""
    return ctypes.string_at(ctypes.addressof(instance), ctypes.sizeof(instance))
