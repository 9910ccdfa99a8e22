"""Sharing guest memory with another process: the vhost-user way.

The owner sends its memory table — each region's guest start, size, file offset and
read-only flag — with the regions' file descriptors attached (SCM_RIGHTS) over a Unix
socket; the receiver maps the same files and builds its own `GuestMemoryMmap`, so both
processes access the same physical pages (atomics included).

The receiver treats the sender as hostile: a malformed table is `MalformedMemoryTable`,
every fd received is closed whatever happens (mapped regions keep duplicates of their
own), and a file not sealed against shrinking is refused (`UnsealedMemory`) unless the
receiver passes `trust_unsealed=True`: a sender that truncates a mapped file would kill
the receiver with SIGBUS.
"""
# pyright: reportPrivateUsage=false

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, fields
from typing import Any, Final, cast

from vm_memory.address import ADDRESS_SPACE_SIZE, GuestAddress
from vm_memory.errors import InvalidArgumentType, MalformedMemoryTable, NotShareable
from vm_memory.mmap_memory import GuestMemoryMmap
from vm_memory.mmap_region import GuestRegionMmap, MmapRegion

MAX_REGIONS: Final = 253
"""Most fds one SCM_RIGHTS message may carry on Linux (SCM_MAX_FD)."""
_MAX_TABLE_BYTES: Final = 1 << 16
_LENGTH_BYTES: Final = 4


@dataclass(frozen=True)
class RegionDescriptor:
    """One row of the memory table: where the region is and where its bytes are."""

    guest_start: int
    size: int
    file_offset: int
    read_only: bool


_ROW_TYPES: Final = {field.name: (bool if field.name == "read_only" else int)
                     for field in fields(RegionDescriptor)}


def memory_table(memory: GuestMemoryMmap) -> tuple[list[RegionDescriptor], list[int]]:
    """The table and fds describing `memory` (the fds stay owned by the regions)."""
    rows: list[RegionDescriptor] = []
    fds: list[int] = []
    for region in memory.regions():
        mapping = region.mapping
        if mapping.fd is None or not mapping.shared:
            raise NotShareable(region.start_value)
        rows.append(RegionDescriptor(region.start_value, region.length, mapping.file_offset,
                                     region.read_only))
        fds.append(mapping.fd)
    return rows, fds


def _check_socket(sock: object) -> None:
    if not issubclass(type(sock), socket.socket):
        raise InvalidArgumentType("sock", "a connected Unix socket (socket.socket)", sock)


def send_memory(sock: socket.socket, memory: GuestMemoryMmap) -> None:
    """Send `memory`'s table and fds over a connected Unix socket."""
    _check_socket(sock)
    rows, fds = memory_table(memory)
    if len(fds) > MAX_REGIONS:
        raise MalformedMemoryTable(f"{len(fds)} regions: one message carries at most "
                                   f"{MAX_REGIONS}")
    payload = json.dumps([asdict(row) for row in rows]).encode()
    socket.send_fds(sock, [len(payload).to_bytes(_LENGTH_BYTES, "little") + payload], fds)


def _parse_row(row: object) -> RegionDescriptor:
    if not isinstance(row, dict):
        raise MalformedMemoryTable("a row must be a JSON object")
    values = cast("dict[str, Any]", row)
    if set(values) != set(_ROW_TYPES):
        raise MalformedMemoryTable(f"a row must have exactly the keys {sorted(_ROW_TYPES)}")
    for name, expected in _ROW_TYPES.items():
        if type(values[name]) is not expected:
            raise MalformedMemoryTable(f"{name} must be {expected.__name__}, not "
                                       f"{type(values[name]).__name__}")
        if expected is int and not 0 <= values[name] < ADDRESS_SPACE_SIZE:
            raise MalformedMemoryTable(f"{name} {values[name]} is outside [0, 2**64)")
    return RegionDescriptor(**values)


def parse_memory_table(data: bytes, fd_count: int) -> list[RegionDescriptor]:
    """The rows of a received table, or `MalformedMemoryTable` saying what is wrong."""
    if len(data) < _LENGTH_BYTES:
        raise MalformedMemoryTable(f"{len(data)} bytes: too short for the length prefix")
    length = int.from_bytes(data[:_LENGTH_BYTES], "little")
    payload = data[_LENGTH_BYTES:]
    if length != len(payload):
        raise MalformedMemoryTable(f"the prefix announces {length} bytes, {len(payload)} came")
    try:
        decoded = json.loads(payload)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, bad UTF-8, nesting
        raise MalformedMemoryTable(f"not a JSON table: {error}") from None
    if not isinstance(decoded, list):
        raise MalformedMemoryTable("the table must be a JSON list of rows")
    rows = [_parse_row(row) for row in cast("list[object]", decoded)]
    if len(rows) != fd_count:
        raise MalformedMemoryTable(f"the table has {len(rows)} regions but {fd_count} fds "
                                   "came")
    return rows


def receive_memory(sock: socket.socket, *, trust_unsealed: bool = False) -> GuestMemoryMmap:
    """Receive a memory table and fds from `send_memory` and map them here.

    Every received fd is closed before this returns or raises. Files must be memfds
    sealed against shrinking unless `trust_unsealed` (see the module docstring).
    """
    _check_socket(sock)
    try:
        data, fds, flags, _ = socket.recv_fds(sock, _MAX_TABLE_BYTES, MAX_REGIONS)
    except OSError as error:
        raise MalformedMemoryTable(f"receiving failed: {error}") from None
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise MalformedMemoryTable("the message or its fds were truncated")
        rows = parse_memory_table(data, len(fds))
        return GuestMemoryMmap._mapped(
            GuestRegionMmap(MmapRegion.from_peer_fd(fd, row.size, offset=row.file_offset,
                                                    read_only=row.read_only,
                                                    trust_unsealed=trust_unsealed),
                            GuestAddress(row.guest_start))
            for row, fd in zip(rows, fds, strict=True))
    finally:
        for fd in fds:  # mapped regions keep duplicates of their own
            os.close(fd)
