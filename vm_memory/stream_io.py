"""Scatter-gather I/O between streams and a list of buffers, one system call per batch.

Guest memory that spans regions is a list of buffers; a file descriptor takes them in
one `readv`/`writev` (or `preadv`/`pwritev` at a file offset), a socket in one
`recvmsg_into`/`sendmsg`, so no byte is copied through Python. The kernel takes at most
`IOV_MAX` buffers a call, so longer lists go in batches.

The count is always exact: bytes moved before an error are reported (the error will
recur on the next call), an error before any byte moved is raised. A file object whose
`readinto`/`write` returns None (a non-blocking stream with nothing to do) moved nothing:
that is `BlockingIOError` when nothing moved before it, like an fd would raise.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import Any, Final, Protocol

from vm_memory.errors import InvalidArgumentType

IOV_MAX: Final = max(1, os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024)
"""The most buffers one readv/writev/sendmsg takes."""


class _Readable(Protocol):
    def readinto(self, buffer: Any, /) -> int | None: ...


class _Writable(Protocol):
    def write(self, buffer: Any, /) -> int | None: ...


StreamSource = int | socket.socket | _Readable
"""What `read_from` reads: a file descriptor, a socket, or a binary file with `readinto`."""
StreamSink = int | socket.socket | _Writable
"""What `write_to` writes: a file descriptor, a socket, or a binary file with `write`."""


def _would_block() -> BlockingIOError:
    return BlockingIOError(errno.EAGAIN, "the stream has nothing to transfer now")


def _checked_count(count: object, limit: int, what: str) -> int:
    """A stream's own count of bytes moved, which must be an int in [0, limit]."""
    if type(count) is not int or not 0 <= count <= limit:
        raise InvalidArgumentType(f"the count {what} returned",
                                  f"an int in [0, {limit}]", count)
    return count


def _transfer(views: list[memoryview], call: Callable[[list[memoryview], int], int]) -> int:
    """Run `call(batch, bytes already moved)` over `views` in batches of IOV_MAX, stopping
    at the first short batch; an error after some bytes moved returns their count."""
    done = 0
    for first in range(0, len(views), IOV_MAX):
        batch = views[first:first + IOV_MAX]
        size = sum(len(view) for view in batch)
        try:
            count = call(batch, done)
        except Exception:
            if done:
                return done
            raise
        done += count
        if count < size:
            break
    return done


def _per_buffer(method: Callable[[memoryview], int | None],
                what: str) -> Callable[[list[memoryview], int], int]:
    """A batch call for a file object: one `readinto`/`write` per buffer."""
    def call(batch: list[memoryview], before: int) -> int:
        done = 0
        for view in batch:
            try:
                result = method(view)
            except Exception:
                if done:
                    return done
                raise
            if result is None:
                if done or before:
                    return done
                raise _would_block()
            count = _checked_count(result, len(view), what)
            done += count
            if count < len(view):
                break
        return done
    return call


def scatter_read(source: StreamSource, views: list[memoryview],
                 file_offset: int | None) -> int:
    """Fill `views` in order from `source`; returns the bytes read (0: end of stream)."""
    if not views:
        return 0
    if isinstance(source, int) and issubclass(type(source), int):  # `__class__` can lie
        if file_offset is None:
            return _transfer(views, lambda batch, _: os.readv(source, batch))
        return _transfer(views, lambda batch, done: os.preadv(source, batch,
                                                              file_offset + done))
    if file_offset is not None:
        raise InvalidArgumentType("file_offset", "None for a socket or file object",
                                  file_offset)
    if isinstance(source, socket.socket):
        return _transfer(views, lambda batch, _: source.recvmsg_into(batch)[0])
    readinto = getattr(source, "readinto", None)
    if readinto is None:
        raise InvalidArgumentType("source", "an fd, a socket or an object with readinto",
                                  source)
    return _transfer(views, _per_buffer(readinto, "readinto"))


def gather_write(destination: StreamSink, views: list[memoryview],
                 file_offset: int | None) -> int:
    """Write `views` in order to `destination`; returns the bytes written."""
    if not views:
        return 0
    if isinstance(destination, int) and issubclass(type(destination), int):
        if file_offset is None:
            return _transfer(views, lambda batch, _: os.writev(destination, batch))
        return _transfer(views, lambda batch, done: os.pwritev(destination, batch,
                                                               file_offset + done))
    if file_offset is not None:
        raise InvalidArgumentType("file_offset", "None for a socket or file object",
                                  file_offset)
    if isinstance(destination, socket.socket):
        return _transfer(views, lambda batch, _: destination.sendmsg(batch))
    write = getattr(destination, "write", None)
    if write is None:
        raise InvalidArgumentType("destination", "an fd, a socket or an object with write",
                                  destination)
    return _transfer(views, _per_buffer(write, "write"))
