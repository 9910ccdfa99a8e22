"""Scatter-gather I/O between streams and a list of buffers, one system call each.

Guest memory that spans regions is a list of buffers; a file descriptor takes them all
in one `readv`/`writev` (or `preadv`/`pwritev` at a file offset), a socket in one
`recvmsg_into`/`sendmsg`, so no byte is copied through Python.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Protocol


class _Readable(Protocol):
    def readinto(self, buffer: Any, /) -> int | None: ...


class _Writable(Protocol):
    def write(self, buffer: Any, /) -> int | None: ...


StreamSource = int | socket.socket | _Readable | _Writable
"""A file descriptor, a socket, or a binary file object."""


def scatter_read(source: StreamSource, views: list[memoryview],
                 file_offset: int | None) -> int:
    """Fill `views` in order from `source` with one call; returns the bytes read."""
    if not views:
        return 0
    if isinstance(source, int):
        if file_offset is None:
            return os.readv(source, views)
        return os.preadv(source, views, file_offset)
    if file_offset is not None:
        raise ValueError("file_offset applies to file descriptors only")
    if isinstance(source, socket.socket):
        return source.recvmsg_into(views)[0]
    readinto = getattr(source, "readinto", None)
    if readinto is None:
        raise TypeError(f"cannot read from a {type(source).__name__}: it has no readinto")
    done = 0
    for view in views:
        count = readinto(view) or 0
        done += count
        if count < len(view):
            break
    return done


def gather_write(destination: StreamSource, views: list[memoryview],
                 file_offset: int | None) -> int:
    """Write `views` in order to `destination` with one call; returns the bytes written."""
    if not views:
        return 0
    if isinstance(destination, int):
        if file_offset is None:
            return os.writev(destination, views)
        return os.pwritev(destination, views, file_offset)
    if file_offset is not None:
        raise ValueError("file_offset applies to file descriptors only")
    if isinstance(destination, socket.socket):
        return destination.sendmsg(views)
    write = getattr(destination, "write", None)
    if write is None:
        raise TypeError(f"cannot write to a {type(destination).__name__}: it has no write")
    done = 0
    for view in views:
        count = write(view)
        count = len(view) if count is None else count
        done += count
        if count < len(view):
            break
    return done
