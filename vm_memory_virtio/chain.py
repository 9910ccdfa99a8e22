"""Descriptor chains as the device sees them, and zero-copy I/O between them and files.

A `DescriptorChain` is what `SplitQueue.pop` returns once it has walked and checked a
chain: its head index and two lists of guest buffers, the device-readable ones (the
request) followed by the device-writable ones (the reply). Every buffer is already
proven to lie inside guest memory, so the I/O here can only fail on the file side.

Payloads move with `GuestMemory.read_from`/`write_to`: one `preadv`/`pwritev` per guest
buffer, straight between the file and guest memory, never through a Python bytes object.
"""

from __future__ import annotations

import ctypes
from typing import Any, TypeVar

from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemory, PartialBuffer

_S = TypeVar("_S", bound=ctypes.Structure)

Segment = tuple[int, int]
"""A guest buffer (or part of one): (guest address, length)."""


class DescriptorChain:
    """A checked chain: its head, readable buffers, then writable buffers."""

    __slots__ = ("head", "readable", "readable_bytes", "writable", "writable_bytes")

    def __init__(self, head: int, readable: list[Segment], writable: list[Segment]) -> None:
        self.head = head
        self.readable = readable
        self.writable = writable
        self.readable_bytes = sum(length for _, length in readable)
        self.writable_bytes = sum(length for _, length in writable)

    def __repr__(self) -> str:
        return (f"DescriptorChain(head={self.head}, readable={self.readable_bytes} bytes in "
                f"{len(self.readable)}, writable={self.writable_bytes} bytes in "
                f"{len(self.writable)})")


def skip(segments: list[Segment], count: int) -> list[Segment]:
    """The part of `segments` after the first `count` bytes."""
    result: list[Segment] = []
    for address, length in segments:
        if count >= length:
            count -= length
            continue
        result.append((address + count, length - count))
        count = 0
    return result


def take(segments: list[Segment], count: int) -> list[Segment]:
    """The first `count` bytes of `segments` (fewer if they are shorter)."""
    result: list[Segment] = []
    for address, length in segments:
        if count <= 0:
            break
        piece = min(length, count)
        result.append((address, piece))
        count -= piece
    return result


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


def file_to_guest(memory: GuestMemory, segments: list[Segment], fd: int,
                  file_offset: int) -> int:
    """Read the file at `file_offset` into `segments`, zero-copy; returns the bytes read
    (short only at the end of the file)."""
    done = 0
    for address, length in segments:
        at = 0
        while at < length:
            count = memory.read_from(GuestAddress(address + at), fd, length - at,
                                     file_offset=file_offset + done)
            if count == 0:
                return done
            at += count
            done += count
    return done


def guest_to_file(memory: GuestMemory, segments: list[Segment], fd: int,
                  file_offset: int) -> int:
    """Write `segments` to the file at `file_offset`, zero-copy; returns the bytes written."""
    done = 0
    for address, length in segments:
        at = 0
        while at < length:
            count = memory.write_to(GuestAddress(address + at), fd, length - at,
                                    file_offset=file_offset + done)
            if count == 0:
                return done
            at += count
            done += count
    return done


def write_bytes(memory: GuestMemory, segments: list[Segment], data: Any) -> int:
    """Copy `data` into the start of `segments`; returns the bytes copied."""
    view = memoryview(data).cast("B")
    done = 0
    for address, length in segments:
        if done >= len(view):
            break
        piece = min(length, len(view) - done)
        memory.write_slice(GuestAddress(address), view[done:done + piece])
        done += piece
    return done
