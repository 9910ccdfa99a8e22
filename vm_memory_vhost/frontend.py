"""A minimal vhost-user front-end: drives a back-end the way QEMU does, for tests.

It connects to a back-end's socket, negotiates, shares guest memory (memfd regions,
whose "front-end virtual addresses" are simply their host addresses here), sets up
queues with real eventfds, and sends any raw message a hostile front-end would.
"""

from __future__ import annotations

import os
import select
import socket
from dataclasses import dataclass

from vm_memory import GuestAddress, GuestMemoryMmap, GuestRegionMmap
from vm_memory_vhost.errors import MalformedMessage
from vm_memory_vhost.protocol import (
    CONFIG_HEADER,
    HEADER,
    INFLIGHT,
    MEMORY_HEADER,
    MEMORY_REGION,
    SINGLE_REGION,
    U64,
    VERSION,
    VRING_ADDR,
    VRING_STATE,
    Connection,
    Request,
)
from vm_memory_virtio import DriverQueue, QueueLayout


@dataclass
class QueueFds:
    """The eventfds of one queue, front-end side."""

    kick: int
    call: int
    err: int

    def close(self) -> None:
        for fd in (self.kick, self.call, self.err):
            os.close(fd)


def user_address(region: GuestRegionMmap) -> int:
    """The region's "front-end virtual address": its host address in this process."""
    assert region.host_address is not None
    return region.host_address


class Frontend:
    """One connection to a back-end."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.connection = Connection(self.sock)
        self.queues: dict[int, QueueFds] = {}

    def close(self) -> None:
        for fds in self.queues.values():
            fds.close()
        self.queues.clear()
        self.sock.close()

    def __enter__(self) -> Frontend:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- raw messages --------------------------------------------------------------

    def send(self, request: int, payload: bytes = b"", fds: tuple[int, ...] = (), *,
             need_reply: bool = False) -> None:
        self.connection.send(request, payload, fds, reply=False, need_reply=need_reply)

    def send_raw(self, data: bytes, fds: tuple[int, ...] = ()) -> None:
        """Bytes as they are, header or not."""
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.sendall(data)

    def reply(self, request: int, timeout: float = 30.0) -> tuple[bytes, list[int]]:
        """The back-end's reply to `request`: its payload and fds."""
        if not _readable(self.sock.fileno(), timeout):
            raise TimeoutError(f"no reply to {Request(request).name} in {timeout} s")
        data, fds, _, _ = socket.recv_fds(self.sock, HEADER.size, 8)
        if len(data) < HEADER.size:
            for fd in fds:
                os.close(fd)
            raise MalformedMessage(Request(request).name, "connection closed before a reply")
        code, flags, size = HEADER.unpack(data)
        payload = b""
        while len(payload) < size:
            chunk = self.sock.recv(size - len(payload))
            if not chunk:
                break
            payload += chunk
        if code != request or flags & 0x3 != VERSION or not flags & 0x4:
            raise MalformedMessage(Request(request).name, f"reply {code} flags {flags:#x}")
        return payload, fds

    def call(self, request: int, payload: bytes = b"", fds: tuple[int, ...] = ()) -> bytes:
        """Send and wait for the reply (fds in the reply are closed)."""
        self.send(request, payload, fds)
        data, received = self.reply(request)
        for fd in received:
            os.close(fd)
        return data

    def acked(self, request: int, payload: bytes = b"", fds: tuple[int, ...] = ()) -> int:
        """Send with NEED_REPLY; the back-end's status (0 is success)."""
        self.send(request, payload, fds, need_reply=True)
        data, _ = self.reply(request)
        value: int = U64.unpack(data)[0]
        return value

    def closed_by_peer(self, timeout: float = 30.0) -> bool:
        """Whether the back-end closed the connection (within `timeout` s)."""
        if not _readable(self.sock.fileno(), timeout):
            return False
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, 4096, 8)
        except ConnectionResetError:
            return True
        for fd in fds:
            os.close(fd)
        return data == b""

    # ---- the usual steps -------------------------------------------------------------

    def negotiate(self, features: int | None = None, protocol_features: int | None = None,
                  ) -> tuple[int, int]:
        """GET/SET features and protocol features (all offered, unless given); returns
        what was offered."""
        offered = U64.unpack(self.call(Request.GET_FEATURES))[0]
        protocol = U64.unpack(self.call(Request.GET_PROTOCOL_FEATURES))[0]
        self.send(Request.SET_PROTOCOL_FEATURES,
                  U64.pack(protocol if protocol_features is None else protocol_features))
        self.send(Request.SET_OWNER)
        self.send(Request.SET_FEATURES, U64.pack(offered if features is None else features))
        return offered, protocol

    def set_mem_table(self, memory: GuestMemoryMmap) -> int:
        """SET_MEM_TABLE with every region of `memory` (acked)."""
        regions = memory.regions()
        payload = MEMORY_HEADER.pack(len(regions), 0) + b"".join(
            MEMORY_REGION.pack(region.start_value, region.length, user_address(region),
                               region.mapping.file_offset) for region in regions)
        fds = tuple(region.mapping.fd for region in regions if region.mapping.fd is not None)
        return self.acked(Request.SET_MEM_TABLE, payload, fds)

    def add_mem_reg(self, region: GuestRegionMmap) -> int:
        assert region.mapping.fd is not None
        return self.acked(Request.ADD_MEM_REG, self.region_payload(region),
                          (region.mapping.fd,))

    def rem_mem_reg(self, region: GuestRegionMmap) -> int:
        return self.acked(Request.REM_MEM_REG, self.region_payload(region))

    @staticmethod
    def region_payload(region: GuestRegionMmap) -> bytes:
        return SINGLE_REGION.pack(0, region.start_value, region.length, user_address(region),
                                  region.mapping.file_offset)

    def get_config(self, size: int = 60) -> bytes:
        payload = self.call(Request.GET_CONFIG, CONFIG_HEADER.pack(0, size, 0) + bytes(size))
        return payload[CONFIG_HEADER.size:]

    def setup_queue(self, memory: GuestMemoryMmap, index: int, layout: QueueLayout, *,
                    event_idx: bool = True, base: int = 0, enable: bool = True,
                    ) -> DriverQueue:
        """Write empty rings, tell the back-end about them, start and enable the queue."""
        driver = DriverQueue(memory, layout, event_idx=event_idx)
        self.configure_queue(memory, index, layout, base=base, enable=enable)
        return driver

    def configure_queue(self, memory: GuestMemoryMmap, index: int, layout: QueueLayout, *,
                        base: int = 0, enable: bool = True) -> QueueFds:
        """The vring messages for `layout` (rings as they are in memory)."""
        def va(address: int) -> int:
            return memory.get_host_address(GuestAddress(address))

        self.send(Request.SET_VRING_NUM, VRING_STATE.pack(index, layout.size))
        self.send(Request.SET_VRING_BASE, VRING_STATE.pack(index, base))
        self.send(Request.SET_VRING_ADDR, VRING_ADDR.pack(
            index, 0, va(layout.desc_table.raw_value()), va(layout.used_ring.raw_value()),
            va(layout.avail_ring.raw_value()), 0))
        fds = QueueFds(os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK),
                       os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK),
                       os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK))
        old = self.queues.pop(index, None)
        if old is not None:
            old.close()
        self.queues[index] = fds
        self.send(Request.SET_VRING_CALL, U64.pack(index), (fds.call,))
        self.send(Request.SET_VRING_ERR, U64.pack(index), (fds.err,))
        self.send(Request.SET_VRING_KICK, U64.pack(index), (fds.kick,))
        if enable:
            self.acked(Request.SET_VRING_ENABLE, VRING_STATE.pack(index, 1))
        return fds

    def kick(self, index: int) -> None:
        os.eventfd_write(self.queues[index].kick, 1)

    def wait_call(self, index: int, timeout: float = 30.0) -> bool:
        """Whether the back-end signalled the queue's call eventfd within `timeout` s."""
        return _wait_eventfd(self.queues[index].call, timeout)

    def wait_err(self, index: int, timeout: float = 30.0) -> bool:
        """Whether the back-end signalled the queue's error eventfd within `timeout` s."""
        return _wait_eventfd(self.queues[index].err, timeout)

    def get_vring_base(self, index: int) -> int:
        payload = self.call(Request.GET_VRING_BASE, VRING_STATE.pack(index, 0))
        value: int = VRING_STATE.unpack(payload)[1]
        return value

    def get_inflight_fd(self, num_queues: int, queue_size: int) -> tuple[int, int]:
        """(fd, size) of a new inflight area from the back-end (the caller closes fd)."""
        self.send(Request.GET_INFLIGHT_FD, INFLIGHT.pack(0, 0, num_queues, queue_size))
        payload, fds = self.reply(Request.GET_INFLIGHT_FD)
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise MalformedMessage("GET_INFLIGHT_FD", f"{len(fds)} fds in the reply")
        size: int = INFLIGHT.unpack(payload)[0]
        return fds[0], size

    def set_inflight_fd(self, fd: int, size: int, num_queues: int, queue_size: int) -> int:
        return self.acked(Request.SET_INFLIGHT_FD,
                          INFLIGHT.pack(size, 0, num_queues, queue_size), (fd,))


def _readable(fd: int, timeout: float) -> bool:
    """Whether `fd` becomes readable within `timeout` s (poll: any fd number works)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _wait_eventfd(fd: int, timeout: float) -> bool:
    if not _readable(fd, timeout):
        return False
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        return False
    return True
