"""vhost-user messages: request codes, flags, payload layouts, and framing with fds.

A message is a 12-byte header (request, flags, payload size; host byte order) followed
by the payload; file descriptors ride along with the header as SCM_RIGHTS ancillary
data (QEMU's docs/interop/vhost-user.rst). `Connection` reads and writes whole messages
on a Unix stream socket and owns every fd it receives until a handler takes it:
whatever a handler leaves in `Message.fds` is closed, so no fd is ever leaked, even for
a message that is refused.
"""

from __future__ import annotations

import array
import enum
import errno
import os
import select
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Final, TypeVar

from vm_memory_vhost.errors import MalformedMessage
from vm_memory_vhost.stop import StopRequest

HEADER: Final = struct.Struct("=III")
U64: Final = struct.Struct("=Q")
VRING_STATE: Final = struct.Struct("=II")
VRING_ADDR: Final = struct.Struct("=IIQQQQ")
MEMORY_HEADER: Final = struct.Struct("=II")
MEMORY_REGION: Final = struct.Struct("=QQQQ")
SINGLE_REGION: Final = struct.Struct("=QQQQQ")  # padding, then one region
CONFIG_HEADER: Final = struct.Struct("=III")
INFLIGHT: Final = struct.Struct("=QQHH4x")

VERSION: Final = 0x1
VERSION_MASK: Final = 0x3
FLAG_REPLY: Final = 0x4
FLAG_NEED_REPLY: Final = 0x8
KNOWN_FLAGS: Final = VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY

MAX_PAYLOAD: Final = 0x1000
"""Larger than any payload the back-end accepts (a 32-region table is 0x408 bytes)."""
MAX_FDS: Final = 32
"""More fds than any message carries (a memory table carries one per region, at most 8)."""
MAX_CONFIG: Final = 256
VRING_INDEX_MASK: Final = 0xFF
VRING_NOFD: Final = 0x100
"""In SET_VRING_KICK/CALL/ERR: no fd attached (polling / no notification)."""

VHOST_USER_F_PROTOCOL_FEATURES: Final = 30

_T = TypeVar("_T")


class Request(enum.IntEnum):
    """Front-end requests (the back-end's own requests are not used here)."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class ProtocolFeature(enum.IntEnum):
    """VHOST_USER_PROTOCOL_F_* bit numbers."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


def request_name(code: int) -> str:
    """The request's name, or its number if unknown (for messages)."""
    try:
        return Request(code).name
    except ValueError:
        return f"request {code}"


@dataclass
class Message:
    """One received message; `fds` are owned by it until a handler takes them."""

    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list[int])

    @property
    def name(self) -> str:
        return request_name(self.request)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    def expect_size(self, *sizes: int) -> None:
        """Refuse a payload of any size but `sizes`."""
        if len(self.payload) not in sizes:
            expected = " or ".join(str(size) for size in sizes)
            raise MalformedMessage(self.name, f"payload of {len(self.payload)} bytes, "
                                              f"expected {expected}")

    def expect_fds(self, count: int) -> None:
        """Refuse any number of attached fds but `count`."""
        if len(self.fds) != count:
            raise MalformedMessage(self.name, f"{len(self.fds)} fds attached, expected "
                                              f"{count}")

    def take_fd(self) -> int:
        """Take ownership of the first attached fd (the caller closes it)."""
        if not self.fds:
            raise MalformedMessage(self.name, "no fd attached")
        return self.fds.pop(0)

    def u64(self) -> int:
        self.expect_size(U64.size)
        value: int = U64.unpack(self.payload)[0]
        return value

    def close_fds(self) -> None:
        while self.fds:
            os.close(self.fds.pop())


class Connection:
    """Whole messages over a connected Unix stream socket.

    With a `stop` request (the server's side), the socket is non-blocking and every wait
    for the peer (a message cut short, a reply the peer does not read) also wakes on
    `stop`: once a stop is requested it raises `StopRequested` instead of waiting on. A
    peer that stops mid-message therefore cannot keep the server from stopping.
    """

    def __init__(self, sock: socket.socket, *, stop: StopRequest | None = None) -> None:
        self.sock = sock
        self._stop = stop
        if stop is not None:
            sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def _wait(self, events: int) -> None:
        """Wait until the socket is ready for `events` (or failed); raises `StopRequested`
        once a stop is requested."""
        stop = self._stop
        if stop is None:  # the caller made the socket non-blocking: fail as the call did
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        poller = select.poll()
        poller.register(self.sock, events)
        poller.register(stop, select.POLLIN)
        while True:
            stop.check()
            ready = {fd for fd, _ in poller.poll()}
            if stop.fileno() in ready:
                stop.woken()
            if self.sock.fileno() in ready:
                return

    def _io(self, operation: Callable[[], _T], events: int) -> _T:
        """`operation` (a call on the socket), waiting for `events` while it would block."""
        while True:
            try:
                return operation()
            except BlockingIOError:
                self._wait(events)

    def _recv_exact(self, count: int, what: str) -> bytes:
        data = bytearray()
        while len(data) < count:
            chunk = self._io(partial(self.sock.recv, count - len(data)), select.POLLIN)
            if not chunk:
                raise MalformedMessage(what, f"connection closed after {len(data)} of "
                                             f"{count} bytes")
            data += chunk
        return bytes(data)

    def receive(self) -> Message | None:
        """The next message, or None when the front-end closed the connection cleanly.

        Raises `MalformedMessage` (closing any fds that came) for a bad header, a
        payload too large or cut short, or truncated ancillary data.
        """
        fds = array.array("i")
        data, ancillary, msg_flags, _ = self._io(
            partial(self.sock.recvmsg, HEADER.size, socket.CMSG_SPACE(MAX_FDS * fds.itemsize)),
            select.POLLIN)
        for level, kind, cdata in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(cdata) - len(cdata) % fds.itemsize
                fds.frombytes(cdata[:usable])
        received = list(fds)
        try:
            if not data:
                if received:
                    raise MalformedMessage("header", "fds without a message")
                return None
            if msg_flags & socket.MSG_CTRUNC:
                raise MalformedMessage("header", f"more than {MAX_FDS} fds attached")
            if len(data) < HEADER.size:
                data += self._recv_exact(HEADER.size - len(data), "header")
            request, flags, size = HEADER.unpack(data)
            name = request_name(request)
            if flags & VERSION_MASK != VERSION:
                raise MalformedMessage(name, f"protocol version {flags & VERSION_MASK}, "
                                             f"expected {VERSION}")
            if flags & ~KNOWN_FLAGS:
                raise MalformedMessage(name, f"unknown flags {flags & ~KNOWN_FLAGS:#x}")
            if flags & FLAG_REPLY:
                raise MalformedMessage(name, "a reply where a request was expected")
            if size > MAX_PAYLOAD:
                raise MalformedMessage(name, f"payload of {size} bytes exceeds the "
                                             f"{MAX_PAYLOAD} this back-end accepts")
            payload = self._recv_exact(size, name) if size else b""
        except BaseException:
            for fd in received:
                os.close(fd)
            raise
        return Message(request, flags, payload, received)

    def send(self, request: int, payload: bytes = b"", fds: tuple[int, ...] = (),
             *, reply: bool = True, need_reply: bool = False) -> None:
        """Send one message (a reply by default) with `fds` attached."""
        flags = VERSION | (FLAG_REPLY if reply else 0) | (FLAG_NEED_REPLY if need_reply else 0)
        data = memoryview(HEADER.pack(request, flags, len(payload)) + payload)
        if fds:  # they go with the first bytes sent
            data = data[self._io(partial(socket.send_fds, self.sock, [data], list(fds)),
                                 select.POLLOUT):]
        while data:
            data = data[self._io(partial(self.sock.send, data), select.POLLOUT):]
