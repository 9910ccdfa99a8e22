"""The vhost-user back-end server: the protocol's state machine and the queue threads.

`VhostUserBackend(device).serve(path)` listens on a Unix socket for one front-end at a
time (QEMU connects as the client) and answers its messages on the calling thread.
Each started and enabled queue gets its own thread, which sleeps on the queue's kick
eventfd, takes the current memory snapshot, serves every available chain through the
device, publishes the used entries, and signals the call eventfd when the driver wants
an interrupt. Queues therefore run concurrently with each other and with the control
messages; the system calls that move data release the GIL.

Anything malformed from the front-end (a bad header, a payload of the wrong size, an
unknown or unsupported request, a wrong number of fds, an address no region covers) is
logged with the facts and the connection is dropped cleanly: queues stopped, memory
unmapped, every received fd closed. The server then waits for the next connection (how
QEMU's `reconnect=` finds a restarted back-end). A queue whose driver breaks the ring
protocol is stopped and its error eventfd signalled (vhost-user's NEEDS_RESET).

`request_stop`, or a signal inside `stop_on_signals`, ends `serve` from any state: every
wait of the server's thread (for a connection, for the rest of a message, for room to
send a reply) also waits on the stop request, which a signal wakes on whichever thread it
lands (`vm_memory_vhost.stop`).

Messages served: GET/SET_FEATURES, GET/SET_PROTOCOL_FEATURES, SET_OWNER, RESET_OWNER,
GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG,
SET_VRING_NUM/ADDR/BASE, GET_VRING_BASE, SET_VRING_KICK/CALL/ERR, SET_VRING_ENABLE,
GET_CONFIG, SET_CONFIG (passed to the device), GET_INFLIGHT_FD, SET_INFLIGHT_FD, with
REPLY_ACK. Protocol features offered: MQ, REPLY_ACK, CONFIG, INFLIGHT_SHMFD,
CONFIGURE_MEM_SLOTS.
"""

from __future__ import annotations

import contextlib
import cProfile
import logging
import os
import select
import selectors
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Generator
from types import FrameType
from typing import Final

from vm_memory import GuestAddress, GuestMemoryError, MmapRegion
from vm_memory_vhost.device import VirtioDevice
from vm_memory_vhost.errors import MalformedMessage, StopRequested, VhostUserError
from vm_memory_vhost.inflight import InflightArea, InflightQueue, queue_area_size
from vm_memory_vhost.memory import MAX_MEM_SLOTS, MemoryTable
from vm_memory_vhost.protocol import (
    CONFIG_HEADER,
    INFLIGHT,
    MAX_CONFIG,
    MEMORY_HEADER,
    MEMORY_REGION,
    SINGLE_REGION,
    U64,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VRING_ADDR,
    VRING_INDEX_MASK,
    VRING_NOFD,
    VRING_STATE,
    Connection,
    Message,
    ProtocolFeature,
    Request,
)
from vm_memory_vhost.stop import StopRequest
from vm_memory_virtio import (
    MAX_QUEUE_SIZE,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    QueueLayout,
    SplitQueue,
    VirtqueueError,
    avail_ring_bytes,
    feature,
    used_ring_bytes,
)

log = logging.getLogger("vm_memory_vhost")

PROTOCOL_FEATURES: Final = sum(1 << bit for bit in (
    ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG,
    ProtocolFeature.INFLIGHT_SHMFD, ProtocolFeature.CONFIGURE_MEM_SLOTS))

_REPLYING: Final = frozenset({
    Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.GET_VRING_BASE,
    Request.GET_QUEUE_NUM, Request.GET_CONFIG, Request.GET_INFLIGHT_FD,
    Request.GET_MAX_MEM_SLOTS})
_ONE: Final = (1).to_bytes(8, sys.byteorder)
"""An eventfd's count is a host-order u64 (eventfd(2)): one signal adds 1."""
PROFILE_VARIABLE: Final = "VM_MEMORY_VHOST_PROFILE"
"""If set, each queue thread runs under cProfile (thread CPU time) and writes its stats to
`$VM_MEMORY_VHOST_PROFILE.<pid>.<queue>.<thread>` when it stops (for the benchmark's
breakdown of where the CPU time goes)."""
MAX_INDIRECT: Final = 1024
"""Descriptors one indirect table may hold (QEMU's VIRTQUEUE_MAX_SIZE; a virtio-blk
driver puts seg_max + 2 there)."""


def _adopt_eventfd(name: str, fd: int) -> int:
    """`fd`, a peer's kick, call or err fd, if it is an eventfd (not a semaphore), made
    non-blocking (the peer's side too: they share the file; QEMU makes them so anyway);
    else closed and refused. It needs /proc to tell. Anything else could end or stall
    the back-end: a pipe's read end fails a signal, a blocking pipe stalls it past
    SIGTERM, a file is always readable (a kick that spins), a directory fails a kick's
    read."""
    try:
        kind = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        kind = "unknown"
    if kind != "anon_inode:[eventfd]":
        os.close(fd)
        raise VhostUserError(name, f"the fd attached is {kind}, not an eventfd")
    if _is_semaphore(fd):  # each read takes 1: a large count keeps a kick ready for ever
        os.close(fd)
        raise VhostUserError(name, "the eventfd attached is a semaphore (EFD_SEMAPHORE)")
    os.set_blocking(fd, False)
    return fd


def _is_semaphore(fd: int) -> bool:
    """Whether the eventfd `fd` counts as a semaphore, as far as the kernel says (its
    fdinfo has said so since Linux 6.6; an older kernel's answer is no)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
            return any(line.split() == ["eventfd-semaphore:", "1"] for line in info)
    except OSError:
        return False


class Vring:
    """What the front-end told the back-end about one queue."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.size = 0
        self.base = 0
        self.addresses: tuple[int, int, int] | None = None  # desc, used, avail (VAs)
        self.kick_fd: int | None = None
        self.call_fd: int | None = None
        self.err_fd: int | None = None
        self.started = False
        self.enabled = False
        self.worker: QueueWorker | None = None
        self.fd_lock = threading.Lock()  # call/err fds are swapped while a worker signals
        self.requests = 0

    def signal(self, which: str) -> None:
        """Write to the call or err eventfd, if there is one. Its count at the maximum
        (the peer never reads it) means a signal is pending anyway; any other failure is
        the peer's, logged, never the back-end's end."""
        with self.fd_lock:
            fd = self.call_fd if which == "call" else self.err_fd
            if fd is not None:
                try:
                    os.write(fd, _ONE)
                except BlockingIOError:
                    pass
                except OSError as error:
                    log.warning("queue %d: cannot signal its %s eventfd: %s", self.index,
                                which, error)

    def replace_fd(self, which: str, fd: int | None) -> None:
        """Make `fd` the kick, call or err eventfd (`which`), closing the one it replaces."""
        attribute = f"{which}_fd"
        with self.fd_lock:
            old: int | None = getattr(self, attribute)
            if old is not None:
                os.close(old)
            setattr(self, attribute, fd)

    def close_fds(self) -> None:
        with self.fd_lock:
            for fd in (self.kick_fd, self.call_fd, self.err_fd):
                if fd is not None:
                    os.close(fd)
            self.kick_fd = self.call_fd = self.err_fd = None


class QueueWorker(threading.Thread):
    """Serves one started queue until stopped."""

    def __init__(self, backend: VhostUserBackend, vring: Vring, queue: SplitQueue,
                 inflight: InflightQueue | None, resubmit: list[int]) -> None:
        super().__init__(name=f"vhost-user queue {vring.index}", daemon=True)
        self.backend = backend
        self.vring = vring
        self.queue = queue
        self.inflight = inflight
        self.resubmit = resubmit
        self.stopping = False
        self.error: VirtqueueError | None = None
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC)

    def stop(self) -> None:
        """Finish the request in hand, then return (joins the thread)."""
        self.stopping = True
        os.eventfd_write(self._stop_fd, 1)
        self.join()
        os.close(self._stop_fd)

    def run(self) -> None:
        profile_path = os.environ.get(PROFILE_VARIABLE)
        if not profile_path:
            self._run()
            return
        profiler = cProfile.Profile(time.thread_time)  # CPU time, not time waiting
        profiler.runcall(self._run)
        profiler.dump_stats(f"{profile_path}.{os.getpid()}.{self.vring.index}."
                            f"{threading.get_ident()}")

    def _run(self) -> None:
        poller = select.poll()
        kick = self.vring.kick_fd
        if kick is not None:
            poller.register(kick, select.POLLIN)
        poller.register(self._stop_fd, select.POLLIN)
        try:
            self._serve_resubmitted()
            while not self.stopping:
                self._serve_available()
                if self.stopping:
                    break
                for fd, _ in poller.poll(None if kick is not None else 1):
                    if kick is not None and fd == kick:
                        with contextlib.suppress(BlockingIOError):
                            os.read(kick, 8)
        except VirtqueueError as error:
            # Kept without its traceback: that holds this frame, hence this worker, its
            # queue and the peer's memory, which a cycle would keep mapped after the
            # peer has gone until a collection ran.
            self.error = error.with_traceback(None)
            error.__context__ = error.__cause__ = None
            log.error("queue %d stopped, needs a reset: %s", self.vring.index, error)
            self.vring.signal("err")
        except GuestMemoryError as error:  # a snapshot lost a region under a queue
            log.error("queue %d stopped: %s", self.vring.index, error)
            self.vring.signal("err")
        except OSError as error:  # its kick eventfd failed (the peer's doing)
            log.error("queue %d stopped: %s", self.vring.index, error)
            self.vring.signal("err")

    def _complete(self, head: int, used: int) -> None:
        self.queue.add_used(head, used, self.inflight)
        self.vring.requests += 1

    def _serve_resubmitted(self) -> None:
        if not self.resubmit:
            return
        self.queue.set_memory(self.backend.table.memory())
        log.info("queue %d: resubmitting %d inflight requests", self.vring.index,
                 len(self.resubmit))
        device = self.backend.device
        for head in self.resubmit:
            chain = self.queue.chain(head)
            self._complete(head, device.handle(self.queue.memory, chain))
        self.resubmit = []
        if self.queue.needs_notification():
            self.vring.signal("call")

    def _serve_available(self) -> None:
        """Serve every available chain. Each chain is popped and handled on the memory
        snapshot current when it is popped: a queue kept busy by its guest follows
        ADD_MEM_REG / REM_MEM_REG / SET_MEM_TABLE from its next chain on."""
        queue = self.queue
        table = self.backend.table
        handle = self.backend.device.handle
        inflight = self.inflight
        served = False
        while True:
            queue.disable_notification()
            while not self.stopping:
                queue.set_memory(table.memory())
                chain = queue.pop()
                if chain is None:
                    break
                if inflight is not None:
                    inflight.begin(chain.head)
                self._complete(chain.head, handle(queue.memory, chain))
                served = True
            if self.stopping or not queue.enable_notification():
                break
        if served and queue.needs_notification():
            self.vring.signal("call")


class VhostUserBackend:
    """A vhost-user back-end for one `VirtioDevice`."""

    def __init__(self, device: VirtioDevice) -> None:
        self.device = device
        self.table = MemoryTable()
        self.vrings = [Vring(index) for index in range(device.num_queues)]
        self.features = 0
        self.protocol_features = 0
        self.inflight: InflightArea | None = None
        self._offered_inflight: MmapRegion | None = None
        self._retired_requests = 0
        self._stop = StopRequest()
        self._handlers: dict[int, Callable[[Message], bytes | tuple[bytes, int] | None]] = {
            Request.GET_FEATURES: self._get_features,
            Request.SET_FEATURES: self._set_features,
            Request.SET_OWNER: self._set_owner,
            Request.RESET_OWNER: self._reset_owner,
            Request.GET_PROTOCOL_FEATURES: self._get_protocol_features,
            Request.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            Request.GET_QUEUE_NUM: self._get_queue_num,
            Request.GET_MAX_MEM_SLOTS: self._get_max_mem_slots,
            Request.SET_MEM_TABLE: self._set_mem_table,
            Request.ADD_MEM_REG: self._add_mem_reg,
            Request.REM_MEM_REG: self._rem_mem_reg,
            Request.SET_VRING_NUM: self._set_vring_num,
            Request.SET_VRING_ADDR: self._set_vring_addr,
            Request.SET_VRING_BASE: self._set_vring_base,
            Request.GET_VRING_BASE: self._get_vring_base,
            Request.SET_VRING_KICK: self._set_vring_kick,
            Request.SET_VRING_CALL: self._set_vring_call,
            Request.SET_VRING_ERR: self._set_vring_err,
            Request.SET_VRING_ENABLE: self._set_vring_enable,
            Request.GET_CONFIG: self._get_config,
            Request.SET_CONFIG: self._set_config,
            Request.GET_INFLIGHT_FD: self._get_inflight_fd,
            Request.SET_INFLIGHT_FD: self._set_inflight_fd,
        }

    # ---- the server loop ---------------------------------------------------------

    def request_stop(self, reason: str = "stop requested") -> None:
        """Make `serve` return (safe in a signal handler and from another thread)."""
        self._stop.request(reason)

    @contextlib.contextmanager
    def stop_on_signals(self, *signums: int) -> Generator[None]:
        """Within: each of `signums` makes `serve` return, whatever the server is doing and
        whichever thread the signal lands on (the previous handlers and wake-up fd are
        restored after). Signal handlers run on the main thread, so `serve` must too."""
        def stop(signum: int, _frame: FrameType | None) -> None:
            self.request_stop(signal.Signals(signum).name)

        # The C-level handler writes to the wake-up fd on whichever thread it runs, so the
        # server's wait wakes and the Python handler (main thread only) gets to run.
        previous_wakeup = signal.set_wakeup_fd(self._stop.wakeup_fd, warn_on_full_buffer=False)
        previous = {signum: signal.signal(signum, stop) for signum in signums}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_wakeup)

    def serve(self, path: str, *, ready: Callable[[], None] | None = None) -> None:
        """Listen on `path` and serve front-ends one after another until `request_stop`.

        A stale socket file at `path` is replaced; the socket file is removed on return.
        Every wait (for a connection, a message, the rest of one, a reply to be sent)
        also waits for the stop request, so a front-end cannot hold the server.
        """
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection: Connection | None = None
        selector = selectors.DefaultSelector()
        try:
            listener.bind(path)
            listener.listen(1)
            listener.setblocking(False)
            selector.register(listener, selectors.EVENT_READ)
            selector.register(self._stop, selectors.EVENT_READ)
            if ready is not None:
                ready()
            while True:
                self._stop.check()
                for key, _ in selector.select():
                    if key.fileobj is listener:
                        connection = self._accept(listener, connection, selector)
                    elif key.fileobj is self._stop:
                        self._stop.woken()
                    elif connection is not None and not self._serve_one(connection):
                        selector.unregister(connection.sock)
                        self.disconnect()
                        connection.close()
                        connection = None
        except StopRequested as stop:
            log.info("%s: shutting down", stop.reason)
        finally:
            if connection is not None:
                self.disconnect()
                connection.close()
            selector.close()
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _accept(self, listener: socket.socket, connection: Connection | None,
                selector: selectors.BaseSelector) -> Connection | None:
        """Take a waiting front-end; the connection now served."""
        try:
            sock, _ = listener.accept()
        except BlockingIOError:  # it went away before it was taken
            return connection
        if connection is not None:
            log.warning("refusing a second front-end while one is connected")
            sock.close()
            return connection
        selector.register(sock, selectors.EVENT_READ)
        log.info("front-end connected")
        return Connection(sock, stop=self._stop)

    def _serve_one(self, connection: Connection) -> bool:
        """Receive and answer one message; False when the connection must end."""
        try:
            message = connection.receive()
        except MalformedMessage as error:
            log.error("%s; disconnecting", error)
            return False
        except OSError as error:
            log.error("front-end connection failed: %s; disconnecting", error)
            return False
        if message is None:
            log.info("front-end disconnected")
            return False
        try:
            return self.dispatch(connection, message)
        finally:
            message.close_fds()

    def dispatch(self, connection: Connection, message: Message) -> bool:
        """Answer one message; False (after logging why) if the connection must end."""
        ack = message.need_reply and message.request not in _REPLYING and \
            self.protocol_features & (1 << ProtocolFeature.REPLY_ACK)
        handler = self._handlers.get(message.request)
        try:
            if handler is None:
                raise MalformedMessage(message.name, "not supported by this back-end")
            result = handler(message)
        except VhostUserError as error:
            log.error("%s; disconnecting", error)
            if ack:
                with contextlib.suppress(OSError):
                    connection.send(message.request, U64.pack(1))
            return False
        try:
            if isinstance(result, tuple):
                payload, fd = result
                connection.send(message.request, payload, (fd,))
            elif result is not None:
                connection.send(message.request, result)
            elif ack:
                connection.send(message.request, U64.pack(0))
        except OSError as error:
            log.error("cannot reply to %s: %s; disconnecting", message.name, error)
            return False
        return True

    def disconnect(self) -> None:
        """Forget the front-end: stop every queue, close its fds, unmap its memory."""
        for vring in self.vrings:
            self._stop_vring(vring)
        log.info("requests per queue: %s",
                 ", ".join(str(vring.requests) for vring in self.vrings))
        for vring in self.vrings:
            vring.close_fds()
            self._retired_requests += vring.requests
        self.vrings = [Vring(index) for index in range(len(self.vrings))]
        self.table.clear()
        self.inflight = None
        self._offered_inflight = None
        self.features = 0
        self.protocol_features = 0

    @property
    def requests_served(self) -> int:
        """Requests completed since the server started, over all connections."""
        return self._retired_requests + sum(vring.requests for vring in self.vrings)

    def close(self) -> None:
        """Release the stop request's pipe (after `serve` returned and outside
        `stop_on_signals`)."""
        self._stop.close()

    # ---- features and ownership -----------------------------------------------------

    @property
    def offered_features(self) -> int:
        return self.device.features | (1 << VHOST_USER_F_PROTOCOL_FEATURES)

    def _get_features(self, message: Message) -> bytes:
        message.expect_size(0)
        return U64.pack(self.offered_features)

    def _set_features(self, message: Message) -> None:
        features = message.u64()
        if features & ~self.offered_features:
            raise VhostUserError(message.name, f"features {features:#x} include "
                                               f"{features & ~self.offered_features:#x}, "
                                               "which were not offered")
        self.features = features

    def _set_owner(self, message: Message) -> None:
        message.expect_size(0)

    def _reset_owner(self, message: Message) -> None:
        message.expect_size(0)
        for vring in self.vrings:
            self._stop_vring(vring)
        self.features = 0

    def _get_protocol_features(self, message: Message) -> bytes:
        message.expect_size(0)
        return U64.pack(PROTOCOL_FEATURES)

    def _set_protocol_features(self, message: Message) -> None:
        features = message.u64()
        if features & ~PROTOCOL_FEATURES:
            raise VhostUserError(message.name, f"protocol features {features:#x} include "
                                               f"{features & ~PROTOCOL_FEATURES:#x}, which "
                                               "were not offered")
        self.protocol_features = features

    def _get_queue_num(self, message: Message) -> bytes:
        message.expect_size(0)
        return U64.pack(self.device.num_queues)

    def _get_max_mem_slots(self, message: Message) -> bytes:
        message.expect_size(0)
        return U64.pack(MAX_MEM_SLOTS)

    # ---- memory ---------------------------------------------------------------------

    def _set_mem_table(self, message: Message) -> None:
        if len(message.payload) < MEMORY_HEADER.size:
            raise MalformedMessage(message.name, f"payload of {len(message.payload)} bytes")
        count, _ = MEMORY_HEADER.unpack_from(message.payload)
        if count > MAX_MEM_SLOTS:
            raise MalformedMessage(message.name, f"{count} regions, at most {MAX_MEM_SLOTS}")
        message.expect_size(MEMORY_HEADER.size + count * MEMORY_REGION.size)
        message.expect_fds(count)
        rows: list[tuple[int, int, int, int, int]] = []
        for index in range(count):
            guest, size, user, offset = MEMORY_REGION.unpack_from(
                message.payload, MEMORY_HEADER.size + index * MEMORY_REGION.size)
            rows.append((guest, size, user, offset, message.fds[index]))
        self.table.replace(message.name, rows)

    def _single_region(self, message: Message) -> tuple[int, int, int, int]:
        message.expect_size(SINGLE_REGION.size)
        _, guest, size, user, offset = SINGLE_REGION.unpack(message.payload)
        return guest, size, user, offset

    def _add_mem_reg(self, message: Message) -> None:
        guest, size, user, offset = self._single_region(message)
        message.expect_fds(1)
        self.table.add(message.name, guest, size, user, offset, message.fds[0])

    def _rem_mem_reg(self, message: Message) -> None:
        guest, size, user, _ = self._single_region(message)
        if len(message.fds) > 1:
            message.expect_fds(1)
        self.table.remove(message.name, guest, size, user)

    # ---- vrings ---------------------------------------------------------------------

    def _vring(self, message: Message, index: int) -> Vring:
        if index >= len(self.vrings):
            raise MalformedMessage(message.name, f"queue {index} does not exist (the device "
                                                 f"has {len(self.vrings)})")
        return self.vrings[index]

    def _stopped_vring(self, message: Message, index: int) -> Vring:
        vring = self._vring(message, index)
        if vring.worker is not None:
            raise VhostUserError(message.name, f"queue {index} is running")
        return vring

    def _state(self, message: Message) -> tuple[int, int]:
        message.expect_size(VRING_STATE.size)
        index, value = VRING_STATE.unpack(message.payload)
        return index, value

    def _set_vring_num(self, message: Message) -> None:
        index, size = self._state(message)
        vring = self._stopped_vring(message, index)
        if not 0 < size <= MAX_QUEUE_SIZE or size & (size - 1):
            raise VhostUserError(message.name, f"queue size {size} is not a power of two up "
                                               f"to {MAX_QUEUE_SIZE}")
        vring.size = size

    def _set_vring_addr(self, message: Message) -> None:
        message.expect_size(VRING_ADDR.size)
        index, _, desc, used, avail, _ = VRING_ADDR.unpack(message.payload)
        vring = self._stopped_vring(message, index)
        vring.addresses = (desc, used, avail)

    def _set_vring_base(self, message: Message) -> None:
        index, base = self._state(message)
        vring = self._stopped_vring(message, index)
        if base > 0xFFFF:
            raise VhostUserError(message.name, f"base {base} is not a 16-bit ring index")
        vring.base = base

    def _get_vring_base(self, message: Message) -> bytes:
        index, _ = self._state(message)
        vring = self._vring(message, index)
        worker = vring.worker
        if worker is not None:
            self._stop_vring(vring)
            vring.base = worker.queue.next_avail
        vring.started = False
        vring.replace_fd("kick", None)
        return VRING_STATE.pack(index, vring.base)

    def _vring_fd(self, message: Message) -> tuple[Vring, int | None]:
        value = message.u64()
        if value & ~(VRING_INDEX_MASK | VRING_NOFD):
            raise MalformedMessage(message.name, f"unknown bits in {value:#x}")
        vring = self._vring(message, value & VRING_INDEX_MASK)
        if value & VRING_NOFD:
            message.expect_fds(0)
            return vring, None
        message.expect_fds(1)
        return vring, _adopt_eventfd(message.name, message.take_fd())

    def _set_vring_kick(self, message: Message) -> None:
        vring, fd = self._vring_fd(message)
        self._stop_vring(vring)
        vring.replace_fd("kick", fd)
        vring.started = True
        self._start_vring(vring)

    def _set_vring_call(self, message: Message) -> None:
        """Install the call eventfd and signal it once (as libvhost-user does): a back-end
        that died between publishing used entries and signalling them left the driver
        waiting for an interrupt that nothing else would send, with no chain in flight
        or available to complete on that queue. A spurious interrupt is harmless."""
        vring, fd = self._vring_fd(message)
        vring.replace_fd("call", fd)
        vring.signal("call")

    def _set_vring_err(self, message: Message) -> None:
        vring, fd = self._vring_fd(message)
        vring.replace_fd("err", fd)

    def _set_vring_enable(self, message: Message) -> None:
        index, enable = self._state(message)
        vring = self._vring(message, index)
        if enable > 1:
            raise MalformedMessage(message.name, f"enable is {enable}, not 0 or 1")
        if not self.features & (1 << VHOST_USER_F_PROTOCOL_FEATURES):
            raise VhostUserError(message.name, "needs VHOST_USER_F_PROTOCOL_FEATURES")
        vring.enabled = bool(enable)
        if vring.enabled:
            self._start_vring(vring)
        else:
            self._stop_vring(vring)

    def _start_vring(self, vring: Vring) -> None:
        """Start a worker if the ring is started, enabled and complete; a ring that cannot
        start (its addresses outside memory, say) gets its error eventfd signalled."""
        enabled = vring.enabled or not self.features & (1 << VHOST_USER_F_PROTOCOL_FEATURES)
        if vring.worker is not None or not vring.started or not enabled:
            return
        try:
            if vring.addresses is None or not vring.size:
                raise VhostUserError("SET_VRING_KICK", f"queue {vring.index} has no "
                                                       "size or addresses")
            name = "SET_VRING_ADDR"
            desc, used, avail = vring.addresses
            layout = QueueLayout(
                vring.size,
                GuestAddress(self.table.to_guest(name, desc, 16 * vring.size)),
                GuestAddress(self.table.to_guest(name, avail, avail_ring_bytes(vring.size))),
                GuestAddress(self.table.to_guest(name, used, used_ring_bytes(vring.size))))
            queue = SplitQueue(self.table.memory(), layout, index=vring.index,
                               event_idx=bool(self.features & feature(VIRTIO_RING_F_EVENT_IDX)),
                               indirect=bool(self.features &
                                             feature(VIRTIO_RING_F_INDIRECT_DESC)),
                               max_indirect=MAX_INDIRECT, next_avail=vring.base)
            tracker: InflightQueue | None = None
            resubmit: list[int] = []
            if self.inflight is not None:
                tracker = self.inflight.queue(vring.index, vring.size)
                used_idx = queue.used_idx()
                resubmit = tracker.recover(used_idx)
                queue.set_indices(used_idx + len(resubmit), used_idx)
            else:
                queue.set_indices(vring.base, queue.used_idx())
        except (VhostUserError, VirtqueueError) as error:
            log.error("queue %d cannot start: %s", vring.index, error)
            vring.signal("err")
            return
        vring.worker = QueueWorker(self, vring, queue, tracker, resubmit)
        vring.worker.start()

    def _stop_vring(self, vring: Vring) -> None:
        worker = vring.worker
        if worker is not None:
            worker.stop()
            vring.worker = None
            vring.base = worker.queue.next_avail

    # ---- config space and inflight ----------------------------------------------------

    def _get_config(self, message: Message) -> bytes:
        if len(message.payload) < CONFIG_HEADER.size:
            raise MalformedMessage(message.name, f"payload of {len(message.payload)} bytes")
        offset, size, flags = CONFIG_HEADER.unpack_from(message.payload)
        message.expect_size(CONFIG_HEADER.size + size)
        if offset + size > MAX_CONFIG:
            raise MalformedMessage(message.name, f"config range [{offset}, +{size}) is past "
                                                 f"{MAX_CONFIG} bytes")
        config = self.device.config().ljust(MAX_CONFIG, b"\0")
        return CONFIG_HEADER.pack(offset, size, flags) + config[offset:offset + size]

    def _set_config(self, message: Message) -> None:
        if len(message.payload) < CONFIG_HEADER.size:
            raise MalformedMessage(message.name, f"payload of {len(message.payload)} bytes")
        offset, size, _ = CONFIG_HEADER.unpack_from(message.payload)
        message.expect_size(CONFIG_HEADER.size + size)
        if offset + size > MAX_CONFIG:
            raise MalformedMessage(message.name, f"config range [{offset}, +{size}) is past "
                                                 f"{MAX_CONFIG} bytes")
        self.device.write_config(offset, message.payload[CONFIG_HEADER.size:])

    def _inflight_request(self, message: Message) -> tuple[int, int, int, int]:
        message.expect_size(INFLIGHT.size)
        size, offset, num_queues, queue_size = INFLIGHT.unpack(message.payload)
        if not 0 < num_queues <= len(self.vrings) or not 0 < queue_size <= MAX_QUEUE_SIZE:
            raise MalformedMessage(message.name, f"{num_queues} queues of {queue_size} "
                                                 f"(the device has {len(self.vrings)} queues)")
        return size, offset, num_queues, queue_size

    def _get_inflight_fd(self, message: Message) -> tuple[bytes, int]:
        _, _, num_queues, queue_size = self._inflight_request(message)
        message.expect_fds(0)
        size = num_queues * queue_area_size(queue_size)
        try:
            area = MmapRegion.memfd(size, name="vhost-user-inflight")
        except GuestMemoryError as error:
            raise VhostUserError(message.name, str(error)) from None
        assert area.fd is not None
        self._offered_inflight = area  # keeps the fd open until the reply is sent
        return INFLIGHT.pack(size, 0, num_queues, queue_size), area.fd

    def _set_inflight_fd(self, message: Message) -> None:
        size, offset, num_queues, queue_size = self._inflight_request(message)
        message.expect_fds(1)
        self.inflight = InflightArea(message.fds[0], size, offset, num_queues, queue_size)
        self._offered_inflight = None
