"""The vhost-user back-end process, driven over its socket by a Python front-end sharing
memfd guest memory: the messages QEMU sends, hot-plug, inflight recovery, malformed
messages (table-driven and fuzzed), hostile rings, signals."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vm_memory import GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion
from vm_memory_vhost import PROTOCOL_FEATURES, ProtocolFeature, Request, VirtioBlkReqHeader
from vm_memory_vhost.backend import Vring
from vm_memory_vhost.blk import (
    VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
)
from vm_memory_vhost.frontend import Frontend
from vm_memory_vhost.inflight import InflightArea
from vm_memory_vhost.protocol import (
    HEADER,
    INFLIGHT,
    MEMORY_HEADER,
    MEMORY_REGION,
    SINGLE_REGION,
    U64,
    VRING_STATE,
)
from vm_memory_virtio import (
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    DriverQueue,
    QueueLayout,
    SplitQueue,
    VirtqDesc,
    feature,
)

from .backend_process import BackendProcess, start_backend

MIB = 1 << 20
SECTORS = 2048
LAYOUTS = [QueueLayout.contiguous(64, GuestAddress(0x1000)),
           QueueLayout.contiguous(64, GuestAddress(0x4000))]


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[BackendProcess]:
    process = start_backend(tmp_path, sectors=SECTORS)
    yield process
    assert process.stop() == 0, process.log_text()
    assert "Traceback" not in process.log_text()
    assert not os.path.exists(process.socket)


def guest_memory() -> GuestMemoryMmap:
    return GuestMemoryMmap.from_ranges_memfd([(GuestAddress(0), MIB),
                                              (GuestAddress(4 * MIB), MIB)])


def connect(backend: BackendProcess, memory: GuestMemoryMmap,
            queues: int = 2) -> tuple[Frontend, list[DriverQueue]]:
    frontend = Frontend(backend.socket)
    frontend.negotiate()
    assert frontend.set_mem_table(memory) == 0
    drivers = [frontend.setup_queue(memory, index, LAYOUTS[index]) for index in range(queues)]
    return frontend, drivers


def request(memory: GuestMemoryMmap, driver: DriverQueue, kind: int, sector: int,
            data: tuple[int, int], slot: int) -> int:
    """Publish one blk request (header and status at `slot`); returns its head."""
    memory.write_slice(GuestAddress(slot), bytes(VirtioBlkReqHeader(kind, 0, sector)))
    memory.write_slice(GuestAddress(slot + 16), b"\xee")
    if kind == VIRTIO_BLK_T_IN:
        return driver.add([(slot, 16)], [data, (slot + 16, 1)])
    return driver.add([(slot, 16), data], [(slot + 16, 1)])


def complete(frontend: Frontend, driver: DriverQueue, index: int,
             count: int) -> list[tuple[int, int]]:
    """Kick and collect `count` used entries, as a virtio driver must with event_idx:
    look at the used ring (which moves `used_event` past what it saw) and wait for an
    interrupt only when that found nothing. Waiting first loses a completion published
    before `used_event` moved (the device then signals nothing): seen on s390x."""
    frontend.kick(index)
    used: list[tuple[int, int]] = []
    while len(used) < count:
        fresh = driver.used()
        if not fresh:
            assert frontend.wait_call(index), f"no interrupt after {len(used)} of {count}"
        used += fresh
    return used


def status(memory: GuestMemoryMmap, slot: int) -> int:
    return memory.read_bytes(GuestAddress(slot + 16), 1)[0]


def test_handshake_then_io_on_two_queues(backend: BackendProcess) -> None:
    memory = guest_memory()
    with Frontend(backend.socket) as frontend:
        offered, protocol = frontend.negotiate()
        assert offered & feature(VIRTIO_F_VERSION_1) and offered & feature(VIRTIO_BLK_F_MQ)
        assert offered & feature(VIRTIO_RING_F_EVENT_IDX)
        assert not offered & feature(VIRTIO_BLK_F_RO)
        assert protocol == PROTOCOL_FEATURES
        assert U64.unpack(frontend.call(Request.GET_QUEUE_NUM))[0] == 2
        assert U64.unpack(frontend.call(Request.GET_MAX_MEM_SLOTS))[0] == 32
        config = frontend.get_config()
        assert int.from_bytes(config[:8], "little") == SECTORS
        assert frontend.set_mem_table(memory) == 0
        drivers = [frontend.setup_queue(memory, index, LAYOUTS[index]) for index in (0, 1)]
        payload = os.urandom(8192)
        memory.write_slice(GuestAddress(4 * MIB), payload)  # in the second region
        slots = [0x20000 + 32 * index for index in range(8)]
        for number, slot in enumerate(slots[:4]):
            request(memory, drivers[0], VIRTIO_BLK_T_IN, number * 8,
                    (0x40000 + number * 4096, 4096), slot)
        for number, slot in enumerate(slots[4:]):
            request(memory, drivers[1], VIRTIO_BLK_T_OUT, 100 + number * 4,
                    (4 * MIB + number * 2048, 2048), slot)
        assert [length for _, length in complete(frontend, drivers[0], 0, 4)] == [4097] * 4
        assert [length for _, length in complete(frontend, drivers[1], 1, 4)] == [1] * 4
        assert [status(memory, slot) for slot in slots] == [VIRTIO_BLK_S_OK] * 8
        image = backend.image.read_bytes()
        for number in range(4):
            assert memory.read_bytes(GuestAddress(0x40000 + number * 4096), 4096) == \
                image[number * 4096:(number + 1) * 4096]
        assert image[100 * 512:100 * 512 + 8192] == payload
        assert frontend.get_vring_base(0) == 4
        assert frontend.get_vring_base(1) == 4


def test_hotplug_regions_while_a_queue_runs(backend: BackendProcess) -> None:
    """ADD_MEM_REG (how QEMU sends its table with CONFIGURE_MEM_SLOTS), REM_MEM_REG, and
    a new SET_MEM_TABLE, each while the queue is running."""
    base = GuestRegionMmap(MmapRegion.memfd(MIB), GuestAddress(0))
    extra = GuestRegionMmap(MmapRegion.memfd(MIB), GuestAddress(8 * MIB))
    memory = GuestMemoryMmap([base])
    with Frontend(backend.socket) as frontend:
        frontend.negotiate()
        assert frontend.add_mem_reg(base) == 0
        driver = frontend.setup_queue(memory, 0, LAYOUTS[0])
        memory = memory.insert_region(extra)
        driver.memory = memory
        assert frontend.add_mem_reg(extra) == 0
        request(memory, driver, VIRTIO_BLK_T_IN, 1, (8 * MIB, 512), 0x20000)
        complete(frontend, driver, 0, 1)
        assert status(memory, 0x20000) == VIRTIO_BLK_S_OK
        assert memory.read_bytes(GuestAddress(8 * MIB), 512) == \
            backend.image.read_bytes()[512:1024]
        # A whole new table with a third region, then that region used.
        third = GuestRegionMmap(MmapRegion.memfd(MIB), GuestAddress(16 * MIB))
        memory = memory.insert_region(third)
        driver.memory = memory
        assert frontend.set_mem_table(memory) == 0
        request(memory, driver, VIRTIO_BLK_T_IN, 2, (16 * MIB, 512), 0x20000)
        complete(frontend, driver, 0, 1)
        assert memory.read_bytes(GuestAddress(16 * MIB), 512) == \
            backend.image.read_bytes()[1024:1536]
        # Removed: a buffer there is no longer guest memory, and the queue says so.
        assert frontend.rem_mem_reg(extra) == 0
        request(memory, driver, VIRTIO_BLK_T_IN, 1, (8 * MIB, 512), 0x20000)
        frontend.kick(0)
        assert frontend.wait_err(0)
    assert backend.wait_log("not in guest memory")


def test_read_only_disk(tmp_path: Path) -> None:
    backend = start_backend(tmp_path, read_only=True, queues=1)
    memory = guest_memory()
    before = backend.image.read_bytes()
    try:
        with Frontend(backend.socket) as frontend:
            offered, _ = frontend.negotiate()
            assert offered & feature(VIRTIO_BLK_F_RO)
            assert frontend.set_mem_table(memory) == 0
            driver = frontend.setup_queue(memory, 0, LAYOUTS[0])
            memory.write_slice(GuestAddress(0x40000), b"\xff" * 4096)
            request(memory, driver, VIRTIO_BLK_T_OUT, 0, (0x40000, 4096), 0x20000)
            request(memory, driver, VIRTIO_BLK_T_IN, 0, (0x50000, 4096), 0x20100)
            complete(frontend, driver, 0, 2)
            assert status(memory, 0x20000) == VIRTIO_BLK_S_IOERR
            assert status(memory, 0x20100) == VIRTIO_BLK_S_OK
    finally:
        assert backend.stop() == 0
    assert backend.image.read_bytes() == before


def test_inflight_recovery_resubmits_exactly_the_unfinished(backend: BackendProcess) -> None:
    """A dead back-end's inflight log (written with the same tracker) says: A, B, C were
    taken; B was returned; C's used entry was published but the log not yet updated (it
    died between the two); D was never taken. The new back-end returns A and D only, A
    first: each of the four chains reaches the used ring exactly once, and the writes of
    B and C (done by the dead one) are not done again."""
    memory = guest_memory()
    with Frontend(backend.socket) as frontend:
        frontend.negotiate()
        fd, size = frontend.get_inflight_fd(2, 64)
        assert size >= 2 * 64 * 16
        driver = DriverQueue(memory, LAYOUTS[0], event_idx=True)
        slots = [0x20000 + 32 * number for number in range(4)]
        for number, slot in enumerate(slots):
            memory.write_slice(GuestAddress(0x40000 + number * 512), bytes([number + 1]) * 512)
            request(memory, driver, VIRTIO_BLK_T_OUT, number, (0x40000 + number * 512, 512),
                    slot)
        area = InflightArea(fd, size, 0, 2, 64)
        dead = area.queue(0, 64)
        dead.recover(0)
        device_side = SplitQueue(memory, LAYOUTS[0], event_idx=True, indirect=True)
        taken = [device_side.pop() for _ in range(3)]
        heads = [chain.head for chain in taken if chain is not None]
        for head in heads:
            dead.begin(head)
        device_side.add_used(heads[1], 1, dead)  # B: returned and logged
        device_side.add_used(heads[2], 1)  # C: published...
        dead.before_publish(heads[2])  # ...the log saw its entry, not the publication
        assert frontend.set_inflight_fd(fd, size, 2, 64) == 0
        os.close(fd)
        assert frontend.set_mem_table(memory) == 0
        frontend.configure_queue(memory, 0, LAYOUTS[0], base=2)  # QEMU: base = used idx
        used = complete(frontend, driver, 0, 4)
        # and nothing more: give a stray completion a second (this also takes the
        # interrupts of the entries above that `complete` did not need to wait for)
        frontend.wait_call(0, timeout=1.0)
        assert driver.used() == []
    # B and C as the dead back-end returned them, then A resubmitted, then D.
    assert [head for head, _ in used] == [heads[1], heads[2], heads[0], 9]
    image = backend.image.read_bytes()
    assert image[0:512] == b"\x01" * 512 and image[3 * 512:4 * 512] == b"\x04" * 512
    original = bytes((index * 13) & 0xFF for index in range(4 * 512))
    assert image[512:1536] == original[512:1536]  # B and C were not written again
    assert backend.wait_log("resubmitting 1 inflight requests")


def test_new_call_fd_is_signalled_for_what_a_dead_backend_returned(
        backend: BackendProcess) -> None:
    """A back-end killed after publishing a used entry and before signalling it leaves
    the driver waiting for an interrupt, with nothing in flight or available on that
    queue: the new back-end has nothing to complete, so only the signal it sends on
    SET_VRING_CALL lets the driver see the entry (a real guest's writers hung here after
    a restart). Control: that signal is one, not a stream (the eventfd then stays quiet)."""
    memory = guest_memory()
    with Frontend(backend.socket) as frontend:
        frontend.negotiate()
        driver = DriverQueue(memory, LAYOUTS[1], event_idx=True)
        memory.write_slice(GuestAddress(0x40000), b"\x07" * 512)
        head = request(memory, driver, VIRTIO_BLK_T_OUT, 0, (0x40000, 512), 0x20000)
        dead = SplitQueue(memory, LAYOUTS[1], event_idx=True, indirect=True)
        chain = dead.pop()
        assert chain is not None and chain.head == head
        dead.add_used(head, 1)  # published; the dead back-end never signalled it
        assert frontend.set_mem_table(memory) == 0
        frontend.configure_queue(memory, 0, LAYOUTS[0])
        frontend.configure_queue(memory, 1, LAYOUTS[1], base=1)  # QEMU: base = used idx
        assert frontend.wait_call(1), "the driver was never told about the used entry"
        assert driver.used() == [(head, 1)]
        assert not frontend.wait_call(1, timeout=1.0)


def stop_with_a_looping_chain(frontend: Frontend, driver: DriverQueue) -> None:
    """Publish a chain whose descriptor names itself next; the queue must stop and signal
    its error eventfd."""
    driver.write_descriptor(0, VirtqDesc(0x20000, 16, 1, 0))
    driver.write_avail_entry(0, 0)
    driver.set_avail_idx(1)
    frontend.kick(driver.index)
    assert frontend.wait_err(driver.index)


def test_hostile_ring_stops_only_its_queue(backend: BackendProcess) -> None:
    memory = guest_memory()
    frontend, drivers = connect(backend, memory)
    with frontend:
        stop_with_a_looping_chain(frontend, drivers[0])
        request(memory, drivers[1], VIRTIO_BLK_T_IN, 0, (0x40000, 512), 0x20100)
        complete(frontend, drivers[1], 1, 1)
        assert status(memory, 0x20100) == VIRTIO_BLK_S_OK
    assert backend.wait_log("longer than its table allows")


# ---- malformed messages ---------------------------------------------------------------------

def _memfd(size: int = MIB, *, sealed: bool = True) -> int:
    fd = os.memfd_create("test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if sealed:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


def _header(request_code: int, size: int, flags: int = 1) -> bytes:
    return HEADER.pack(request_code, flags, size)


MALFORMED: dict[str, tuple[bytes, int, str]] = {
    # name: (bytes sent, number of memfds attached, what the log says)
    "version 2": (_header(Request.GET_FEATURES, 0, 2), 0, "protocol version 2"),
    "unknown flags": (_header(Request.GET_FEATURES, 0, 0x101), 0, "unknown flags"),
    "a reply": (_header(Request.GET_FEATURES, 0, 5), 0, "a reply where a request"),
    "huge payload": (_header(Request.SET_FEATURES, 0x100000), 0, "exceeds"),
    "short u64": (_header(Request.SET_FEATURES, 4) + b"\0" * 4, 0, "expected 8"),
    "unknown request": (_header(99, 0), 0, "request 99: not supported"),
    "unsupported request": (_header(Request.SET_LOG_BASE, 8) + bytes(8), 0, "not supported"),
    "unoffered feature": (_header(Request.SET_FEATURES, 8) + U64.pack(1 << 63), 0,
                          "not offered"),
    "too many regions": (_header(Request.SET_MEM_TABLE, 8) + MEMORY_HEADER.pack(40, 0), 0,
                         "40 regions"),
    "regions without fds": (
        _header(Request.SET_MEM_TABLE, 40) + MEMORY_HEADER.pack(1, 0)
        + MEMORY_REGION.pack(0, MIB, 0x7000_0000, 0), 0, "0 fds attached, expected 1"),
    "region past the file": (
        _header(Request.ADD_MEM_REG, 40) + SINGLE_REGION.pack(0, 0, 4 * MIB, 0x7000_0000, 0),
        1, "cannot map region"),
    "region unsealed": (
        _header(Request.ADD_MEM_REG, 40) + SINGLE_REGION.pack(0, 0, MIB, 0x7000_0000, 0),
        1, "not sealed against shrinking"),
    "region too many fds": (
        _header(Request.ADD_MEM_REG, 40) + SINGLE_REGION.pack(0, 0, MIB, 0x7000_0000, 0),
        3, "3 fds attached"),
    "region wraps": (
        _header(Request.ADD_MEM_REG, 40) + SINGLE_REGION.pack(0, 2**64 - 4096, MIB, 0, 0),
        1, "passes 2**64"),
    "queue out of range": (_header(Request.SET_VRING_NUM, 8) + VRING_STATE.pack(7, 64), 0,
                           "queue 7 does not exist"),
    "queue size not power of two": (
        _header(Request.SET_VRING_NUM, 8) + VRING_STATE.pack(0, 100), 0, "power of two"),
    "kick unknown bits": (_header(Request.SET_VRING_KICK, 8) + U64.pack(0x10000), 0,
                          "unknown bits"),
    "kick nofd with fd": (_header(Request.SET_VRING_KICK, 8) + U64.pack(0x100), 1,
                          "1 fds attached, expected 0"),
    "config too large": (_header(Request.GET_CONFIG, 1012) + struct.pack("=III", 0, 1000, 0)
                         + bytes(1000), 0, "past 256"),
    "inflight queues": (_header(Request.GET_INFLIGHT_FD, INFLIGHT.size)
                        + INFLIGHT.pack(0, 0, 9, 64), 0, "9 queues"),
    "ring addresses unmapped": (b"", 0, "cannot start"),
    "cut short": (_header(Request.SET_FEATURES, 8) + b"\0\0", 0, "connection closed after"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_message_is_refused_cleanly(backend: BackendProcess, case: str) -> None:
    """Each: a clear error in the log, the connection dropped, no fd kept; the back-end
    then serves the next front-end."""
    data, fd_count, reason = MALFORMED[case]
    baseline = backend.fd_count()
    fds = [_memfd(sealed=case != "region unsealed") for _ in range(fd_count)]
    with Frontend(backend.socket) as frontend:
        if case == "ring addresses unmapped":  # well-formed messages, nonsense addresses
            frontend.negotiate()
            frontend.set_mem_table(guest_memory())
            frontend.send(Request.SET_VRING_NUM, VRING_STATE.pack(0, 64))
            frontend.send(Request.SET_VRING_ADDR, struct.pack("=IIQQQQ", 0, 0, 16, 32, 64, 0))
            kick = os.eventfd(0)
            frontend.send(Request.SET_VRING_KICK, U64.pack(0), (kick,))
            os.close(kick)
            frontend.acked(Request.SET_VRING_ENABLE, VRING_STATE.pack(0, 1))
        else:
            frontend.send_raw(data, tuple(fds))
            if case == "cut short":
                frontend.sock.shutdown(2)
            else:
                assert frontend.closed_by_peer(), case
    for fd in fds:
        os.close(fd)
    assert backend.wait_log(reason), backend.log_text()
    assert backend.wait_fd_count(baseline) == baseline
    serves_the_next_front_end(backend)


def serves_the_next_front_end(backend: BackendProcess) -> None:
    control_memory = guest_memory()
    frontend, drivers = connect(backend, control_memory, queues=1)
    with frontend:
        request(control_memory, drivers[0], VIRTIO_BLK_T_IN, 0, (0x40000, 512), 0x20000)
        complete(frontend, drivers[0], 0, 1)
        assert status(control_memory, 0x20000) == VIRTIO_BLK_S_OK


# ---- hostile kick, call and err fds ---------------------------------------------------------

def _hostile_fd(kind: str) -> tuple[int, list[int]]:
    """(the fd a hostile front-end sends, the fds to close afterwards)."""
    if kind == "a directory":
        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        return fd, [fd]
    if kind == "/dev/null":
        fd = os.open(os.devnull, os.O_RDWR)
        return fd, [fd]
    read, write = os.pipe()
    if kind == "a pipe's read end":
        return read, [read, write]
    os.set_blocking(write, False)  # "a full, blocking pipe"
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write, bytes(65536))
    os.set_blocking(write, True)
    return write, [read, write]


@pytest.mark.parametrize("which", [Request.SET_VRING_KICK, Request.SET_VRING_CALL,
                                   Request.SET_VRING_ERR], ids=lambda which: which.name)
@pytest.mark.parametrize("kind", ["a pipe's read end", "a full, blocking pipe",
                                  "a directory", "/dev/null"])
def test_a_kick_call_or_err_fd_that_is_not_an_eventfd_is_refused(
        backend: BackendProcess, which: Request, kind: str) -> None:
    """Refused on arrival: the connection dropped, no fd kept, the next front-end served.
    Accepted, a pipe's read end as the call or err fd ended the back-end (the signal's
    write failed), a full blocking pipe stalled it past SIGTERM, a directory as the kick
    ended its queue's thread with a traceback, and /dev/null as the kick spun a core."""
    baseline = backend.fd_count()
    fd, opened = _hostile_fd(kind)
    with Frontend(backend.socket) as frontend:
        frontend.negotiate()
        frontend.send(which, U64.pack(0), (fd,))
        assert frontend.closed_by_peer()
    for each in opened:
        os.close(each)
    assert backend.wait_log("not an eventfd"), backend.log_text()
    assert backend.wait_fd_count(baseline) == baseline
    serves_the_next_front_end(backend)


def test_a_semaphore_eventfd_is_refused_as_a_kick(backend: BackendProcess) -> None:
    """Each read of a semaphore eventfd takes 1 from its count: written once with a large
    count, a kick stays ready for ever and its queue thread spins (3.0 CPU s in 3 s)."""
    kick = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK | os.EFD_SEMAPHORE)
    with open(f"/proc/self/fdinfo/{kick}", encoding="ascii") as info:
        if "eventfd-semaphore" not in info.read():
            os.close(kick)
            pytest.skip("this kernel's fdinfo does not say whether an eventfd is a "
                        "semaphore (Linux 6.6 and later do)")
    baseline = backend.fd_count()
    with Frontend(backend.socket) as frontend:
        frontend.negotiate()
        frontend.send(Request.SET_VRING_KICK, U64.pack(0), (kick,))
        assert frontend.closed_by_peer()
    os.close(kick)
    assert backend.wait_log("a semaphore"), backend.log_text()
    assert backend.wait_fd_count(baseline) == baseline
    serves_the_next_front_end(backend)


def test_a_blocking_eventfd_the_peer_never_reads_cannot_stall_the_backend(
        backend: BackendProcess) -> None:
    """A blocking call eventfd whose count is one below its maximum: the signal sent on
    install blocked for ever, and SIGTERM could not stop the back-end. A peer's eventfds
    are made non-blocking: a full count means a signal is pending anyway."""
    call = os.eventfd(0, os.EFD_CLOEXEC)
    os.eventfd_write(call, 2**64 - 2)
    with Frontend(backend.socket) as frontend:
        frontend.negotiate()
        frontend.send(Request.SET_VRING_CALL, U64.pack(0), (call,))
        frontend.send(Request.GET_FEATURES)
        features, _ = frontend.reply(Request.GET_FEATURES, timeout=10)
        assert len(features) == U64.size
    os.close(call)
    serves_the_next_front_end(backend)


def test_a_queue_stopped_by_its_guest_lets_go_of_the_peers_memory(
        backend: BackendProcess) -> None:
    """After a queue stops on a hostile chain and the front-end leaves, the peer's memfds
    are closed and unmapped at once: the stopped worker kept its error's traceback, a
    cycle through the worker, its queue and the memory that held them (seen for 10 s and
    more, until a collection happened to run)."""
    baseline = backend.fd_count()
    memory = guest_memory()
    frontend, drivers = connect(backend, memory, queues=1)
    with frontend:
        stop_with_a_looping_chain(frontend, drivers[0])
    assert backend.wait_fd_count(baseline, timeout=5) == baseline
    with open(f"/proc/{backend.process.pid}/maps", encoding="utf-8") as maps:
        assert not [line for line in maps if "memfd:" in line], "the peer's memory is mapped"


def test_reply_ack_reports_failure_before_disconnecting(backend: BackendProcess) -> None:
    with Frontend(backend.socket) as frontend:
        frontend.negotiate()
        assert frontend.acked(Request.SET_VRING_NUM, VRING_STATE.pack(0, 64)) == 0
        assert frontend.acked(Request.SET_VRING_NUM, VRING_STATE.pack(0, 3)) == 1
        assert frontend.closed_by_peer()


_requests = st.one_of(st.sampled_from([int(code) for code in Request]),
                      st.integers(0, 2**32 - 1))


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)
@given(_requests, st.integers(0, 15), st.binary(max_size=300), st.integers(0, 4),
       st.booleans())
def test_fuzzed_messages_never_break_the_backend(backend: BackendProcess, request_code: int,
                                                 flags: int, payload: bytes, fd_count: int,
                                                 lie_about_size: bool) -> None:
    """Random requests, flags, payloads and fds (sizes honest or not): the back-end answers
    or disconnects, keeps no fd, and keeps serving."""
    _fuzz_one(backend, request_code, flags, payload, fd_count, lie_about_size)


@pytest.fixture(scope="module")
def long_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    process = start_backend(tmp_path_factory.mktemp("fuzz"))
    yield process
    assert process.stop() == 0, process.log_text()


@pytest.mark.long
@settings(settings.get_profile("long"))
@given(_requests, st.integers(0, 15), st.binary(max_size=300), st.integers(0, 4),
       st.booleans())
def test_fuzzed_messages_long(long_backend: BackendProcess, request_code: int, flags: int,
                              payload: bytes, fd_count: int, lie_about_size: bool) -> None:
    _fuzz_one(long_backend, request_code, flags, payload, fd_count, lie_about_size)


_IDLE_FDS: dict[int, int] = {}
"""Per back-end pid: its fd count with no front-end connected (taken before the first)."""


def _fuzz_one(backend: BackendProcess, request_code: int, flags: int, payload: bytes,
              fd_count: int, lie_about_size: bool) -> None:
    baseline = _IDLE_FDS.setdefault(backend.process.pid, backend.fd_count())
    size = len(payload) + (3 if lie_about_size else 0)
    fds = [_memfd(4096) for _ in range(fd_count)]
    try:
        with Frontend(backend.socket) as frontend:
            frontend.send_raw(HEADER.pack(request_code, flags, size) + payload, tuple(fds))
            frontend.sock.shutdown(1)  # no more bytes: a lying size ends in EOF
            frontend.closed_by_peer()
    finally:
        for fd in fds:
            os.close(fd)
    assert backend.process.poll() is None, backend.log_text()
    assert backend.wait_fd_count(baseline) == baseline
    with Frontend(backend.socket) as frontend:
        assert U64.unpack(frontend.call(Request.GET_QUEUE_NUM))[0] == 2


# ---- signals -------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_with_a_front_end_connected(tmp_path: Path, signum: int) -> None:
    backend = start_backend(tmp_path)
    memory = guest_memory()
    frontend, drivers = connect(backend, memory)
    with frontend:
        request(memory, drivers[0], VIRTIO_BLK_T_IN, 0, (0x40000, 512), 0x20000)
        complete(frontend, drivers[0], 0, 1)
        assert backend.stop(signum) == 0
        assert frontend.closed_by_peer()
    log = backend.log_text()
    assert "shutting down" in log and "1 requests served" in log, log
    assert "Traceback" not in log
    assert not os.path.exists(backend.socket)


def test_protocol_features_offered_match_the_messages_served() -> None:
    names = {ProtocolFeature(bit).name for bit in range(17) if PROTOCOL_FEATURES >> bit & 1}
    assert names == {"MQ", "REPLY_ACK", "CONFIG", "INFLIGHT_SHMFD", "CONFIGURE_MEM_SLOTS"}


def test_each_signal_adds_one_to_the_eventfds_count() -> None:
    """A call or err signal adds 1 to the eventfd's count, which the kernel reads as a
    host-order u64: a count written in another byte order adds 2**56 on the other kind of
    host (the driver then sees a count no signal sent, and the 256th such write
    overflows the eventfd). Control: that other order, written here, is not a count of 1."""
    vring = Vring(0)
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    vring.replace_fd("call", fd)
    try:
        vring.signal("call")
        vring.signal("call")
        assert os.eventfd_read(fd) == 2
        os.write(fd, (1).to_bytes(8, "big" if sys.byteorder == "little" else "little"))
        assert os.eventfd_read(fd) == 1 << 56
    finally:
        vring.close_fds()
