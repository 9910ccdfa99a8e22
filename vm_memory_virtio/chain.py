"""Descriptor chains as the device sees them, and zero-copy I/O between them and files.

A `DescriptorChain` is what `SplitQueue.pop` returns once it has walked and checked a
chain: its head index and two lists of guest buffers, the device-readable ones (the
request) followed by the device-writable ones (the reply). Every buffer is already
proven to lie inside guest memory, so the I/O here can only fail on the file side.

Payloads move with `GuestMemory.read_vectored_from`/`write_vectored_to`: one
`preadv`/`pwritev` for a whole request's buffers, straight between the file and guest
memory, never through a Python bytes object.
"""

from __future__ import annotations

import ctypes
from typing import Any, TypeVar

from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemory, PartialBuffer
from vm_memory.buffers import byte_view

_S = TypeVar("_S", bound=ctypes.Structure)

Segment = tuple[int, int]
"""A guest buffer (or part of one): (guest address, length)."""


class DescriptorChain:
    """A checked chain: its head, readable buffers, then writable buffers."""

    __slots__ = ("head", "readable", "readable_bytes", "writable", "writable_bytes")

    def __init__(self, head: int, readable: list[Segment], writable: list[Segment],
                 readable_bytes: int | None = None, writable_bytes: int | None = None,
                 ) -> None:
        self.head = head
        self.readable = readable
        self.writable = writable
        self.readable_bytes = sum(length for _, length in readable) \
            if readable_bytes is None else readable_bytes
        self.writable_bytes = sum(length for _, length in writable) \
            if writable_bytes is None else writable_bytes

    def __repr__(self) -> str:
        return (f"DescriptorChain(head={self.head}, readable={self.readable_bytes} bytes in "
                f"{len(self.readable)}, writable={self.writable_bytes} bytes in "
                f"{len(self.writable)})")


def skip(segments: list[Segment], count: int) -> list[Segment]:
    """The part of `segments` after the first `count` bytes."""
    for position, (address, length) in enumerate(segments):
        if count < length:
            rest = segments[position + 1:]
            return [(address + count, length - count), *rest] if count else \
                segments[position:]
        count -= length
    return []


def take(segments: list[Segment], count: int) -> list[Segment]:
    """The first `count` bytes of `segments` (fewer if they are shorter)."""
    for position, (address, length) in enumerate(segments):
        if count <= length:
            if count <= 0:
                return segments[:position]
            return [*segments[:position], (address, count)] if count < length else \
                segments[:position + 1]
        count -= length
    return list(segments)


def last_byte(segments: list[Segment]) -> int | None:
    """The guest address of the last byte of `segments` (None if they are empty)."""
    for address, length in reversed(segments):
        if length:
            return address + length - 1
    return None


def read_struct(memory: GuestMemory, segments: list[Segment], ctype: type[_S]) -> _S:
    """A Structure from the start of `segments` (which must hold at least its size).

    One `read_obj` when the first buffer holds it at an aligned address, else
    `read_obj_unaligned`, else the bytes gathered across buffers.
    """
    size = ctypes.sizeof(ctype)
    address, length = segments[0]
    if length >= size:
        aligned = AlignedGuestAddress.try_new(ctype, GuestAddress(address))
        if aligned is not None:
            return memory.read_obj(aligned)
        return memory.read_obj_unaligned(GuestAddress(address), ctype)
    gathered = bytearray()
    for address, length in take(segments, size):
        gathered += memory.read_bytes(GuestAddress(address), length)
    if len(gathered) < size:
        raise PartialBuffer(segments[0][0], size, 0, len(gathered))
    return ctype.from_buffer_copy(gathered)


def coalesce(segments: list[Segment]) -> list[Segment]:
    """`segments` with each run of adjacent buffers (one ending where the next starts)
    merged into one: a guest's large request is often physically contiguous pages, and
    every range costs the library a check."""
    merged: list[Segment] = []
    end = -1
    for address, length in segments:
        if address == end and merged:
            start, previous = merged[-1]
            merged[-1] = (start, previous + length)
        else:
            merged.append((address, length))
        end = address + length
    return merged


def _ranges(segments: list[Segment]) -> list[tuple[GuestAddress, int]]:
    return [(GuestAddress(address), length) for address, length in segments]


def file_to_guest(memory: GuestMemory, segments: list[Segment], fd: int,
                  file_offset: int) -> int:
    """Read the file at `file_offset` into `segments`, zero-copy, with one `preadv` for
    the whole scatter list (per `IOV_MAX` buffers); returns the bytes read (short only at
    the end of the file). Every segment is checked (backed, writable) before a byte
    moves, so a bad one raises the library's typed error with guest memory untouched."""
    segments = coalesce(segments)
    total = sum(length for _, length in segments)
    done = memory.read_vectored_from(_ranges(segments), fd, file_offset=file_offset)
    while 0 < done < total:  # a short read (a signal, the end of the file): go on
        count = memory.read_vectored_from(_ranges(skip(segments, done)), fd,
                                          file_offset=file_offset + done)
        if count == 0:
            break
        done += count
    return done


def guest_to_file(memory: GuestMemory, segments: list[Segment], fd: int,
                  file_offset: int) -> int:
    """Write `segments` to the file at `file_offset`, zero-copy, with one `pwritev` for
    the whole gather list (per `IOV_MAX` buffers); returns the bytes written. Every
    segment is checked before a byte moves."""
    segments = coalesce(segments)
    total = sum(length for _, length in segments)
    done = memory.write_vectored_to(_ranges(segments), fd, file_offset=file_offset)
    while 0 < done < total:
        count = memory.write_vectored_to(_ranges(skip(segments, done)), fd,
                                         file_offset=file_offset + done)
        if count == 0:
            break
        done += count
    return done


def write_bytes(memory: GuestMemory, segments: list[Segment], data: Any) -> int:
    """Copy `data` (any contiguous buffer; else `InvalidArgumentType`) into the start of
    `segments`; returns the bytes copied."""
    view = byte_view(data, writable=False, what="write_bytes' data")
    done = 0
    for address, length in segments:
        if done >= len(view):
            break
        piece = min(length, len(view) - done)
        memory.write_slice(GuestAddress(address), view[done:done + piece])
        done += piece
    return done
