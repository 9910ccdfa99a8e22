"""Sharing guest memory with another process, as a vhost-user back-end receives it.

The test process builds guest memory from two sealed memfds and a file mapped at an
offset, and sends its memory table with `send_memory` over a Unix socket pair
(SCM_RIGHTS). A separate Python process (this file run as a script) rebuilds the memory
with `receive_memory`. Both then check that every write of one side — bulk, typed and
atomic — is seen by the other, that the peer cannot truncate the sealed memfds, and that
concurrent `fetch_add`s from both processes lose no update while the same harness doing
a non-atomic read-then-write does lose some (so the check can fail; on a loaded machine
the plain race runs again, a bounded number of times, until the two processes overlap).
"""

from __future__ import annotations

import ctypes
import gc
import json
import mmap
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import pytest
from host_assumptions import needs_8_byte_atomics
from support import provoke, python_environment

from vm_memory import (
    AlignedGuestAddress,
    FileOffset,
    GuestAddress,
    GuestMemoryMmap,
    GuestRegionMmap,
    MmapRegion,
    NotShareable,
    ReadOnlyRegion,
    receive_memory,
    send_memory,
)

PAGE: Final = mmap.PAGESIZE
MEMFD_STARTS: Final = (0x10_0000, 0x10_0000 + 2 * PAGE)
"""Two adjacent two-page memfd regions: a write crossing the boundary lands in both."""
FILE_START: Final = 0x20_0000
FILE_OFFSET: Final = 3 * PAGE
BOUNDARY: Final = MEMFD_STARTS[1]

# Shared variables (u64, in the first region).
COUNTER_ATOMIC: Final = MEMFD_STARTS[0] + 0x00
COUNTER_PLAIN: Final = MEMFD_STARTS[0] + 0x08
READY: Final = MEMFD_STARTS[0] + 0x10
GO: Final = MEMFD_STARTS[0] + 0x18
CHILD_ATOMIC: Final = MEMFD_STARTS[0] + 0x20
PARENT_ATOMIC: Final = MEMFD_STARTS[0] + 0x28
FLAGS: Final = MEMFD_STARTS[0] + 0x30

PARENT_BYTES: Final = b"written by the parent before sharing" * 8
CHILD_BYTES: Final = b"written by the child after mapping" * 8
LATE_BYTES: Final = b"written by the parent after the child mapped" * 8
FILE_BYTES: Final = b"file content at its offset"
INCREMENTS: Final = 100_000
"""Per side and race: long enough (tens of milliseconds) for the two processes to overlap."""
CONTROL_ATTEMPTS: Final = 10
"""Plain races run until one loses an update, at most this many (see `support.provoke`):
on a loaded machine one race may find the two processes never running at once."""
TIMEOUT: Final = 300.0
"""Seconds after which a silent peer is a failure, not a hang."""


def u64(address: int) -> AlignedGuestAddress[ctypes.c_uint64]:
    return AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(address))


def _line(sock: socket.socket) -> str:
    """One newline-terminated message from the other side."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError(f"the peer hung up after {data!r}")
        data += chunk
    return data.decode().strip()


def _send(sock: socket.socket, message: str) -> None:
    sock.sendall(message.encode() + b"\n")


def _race(memory: GuestMemoryMmap, atomic: bool, count: int) -> None:
    """Wait at the gate, then increment the shared counter `count` times."""
    memory.fetch_add(u64(READY), 1)
    while memory.read_atomic(u64(GO)) == 0:
        pass
    if atomic:
        address = u64(COUNTER_ATOMIC)
        for _ in range(count):
            memory.fetch_add(address, 1)
    else:
        plain = u64(COUNTER_PLAIN)
        for _ in range(count):
            memory.write_obj(plain, memory.read_obj(plain) + 1)


# ---- The peer process ---------------------------------------------------------------


def peer(sock: socket.socket) -> dict[str, Any]:
    """The back-end side: receive the memory, then follow the test's script."""
    # The shared file region is a plain file, which nothing stops its owner from
    # truncating: the peer is this test, so it is trusted explicitly.
    memory = receive_memory(sock, trust_unsealed=True)
    report: dict[str, Any] = {
        "layout": [(r.start_value, r.length, r.read_only) for r in memory.regions()],
        "parent_bytes": memory.read_bytes(GuestAddress(BOUNDARY - 16),
                                          len(PARENT_BYTES)).decode(),
        "parent_atomic": memory.read_atomic(u64(PARENT_ATOMIC)),
        "file_bytes": memory.read_bytes(GuestAddress(FILE_START),
                                        len(FILE_BYTES)).decode(),
    }
    # Writes of every kind, for the parent to see.
    memory.write_slice(GuestAddress(BOUNDARY - 8), CHILD_BYTES)
    memory.write_atomic(u64(CHILD_ATOMIC), 0x1122_3344_5566_7788)
    report["cas"] = memory.compare_exchange(u64(PARENT_ATOMIC), 0xFEED, 0xBEEF)
    memory.fetch_or(u64(FLAGS), 0b01)
    memory.write_obj_unaligned(GuestAddress(FILE_START + 5), ctypes.c_uint32, 0xC0DE_CAFE)
    _send(sock, "child wrote")
    assert _line(sock) == "parent wrote again"
    report["late_bytes"] = memory.read_bytes(GuestAddress(BOUNDARY - 20),
                                             len(LATE_BYTES)).decode()
    report["flags"] = memory.read_atomic(u64(FLAGS))
    report["swapped"] = memory.read_atomic(u64(CHILD_ATOMIC))
    # The peer cannot truncate the sealed memfds under the owner.
    truncate_errors: list[str] = []
    for region in memory.regions()[:2]:
        assert region.mapping.fd is not None
        try:
            os.ftruncate(region.mapping.fd, PAGE)
            truncate_errors.append("truncated!")
        except OSError as error:
            truncate_errors.append(type(error).__name__)
    report["truncate"] = truncate_errors
    while (command := _line(sock)) != "done":
        _race(memory, command == "race atomic", INCREMENTS)
        _send(sock, "raced")
    return report


# ---- The test side -------------------------------------------------------------------


@contextmanager
def shared_memory() -> Generator[GuestMemoryMmap]:
    """Two sealed memfd regions and a shared file mapped at an offset."""
    with tempfile.TemporaryFile() as backing:
        backing.write(b"\xee" * FILE_OFFSET + FILE_BYTES)
        backing.truncate(FILE_OFFSET + PAGE)
        backing.flush()
        regions = [GuestRegionMmap(MmapRegion.memfd(2 * PAGE), GuestAddress(start))
                   for start in MEMFD_STARTS]
        regions.append(GuestRegionMmap(
            MmapRegion.from_file(backing.fileno(), PAGE, offset=FILE_OFFSET),
            GuestAddress(FILE_START)))
        yield GuestMemoryMmap.from_regions(regions)


@contextmanager
def peer_process() -> Generator[tuple[socket.socket, subprocess.Popen[str]]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(theirs.fileno())],
        pass_fds=[theirs.fileno()], env=python_environment(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    theirs.close()
    ours.settimeout(TIMEOUT)
    try:
        yield ours, process
    finally:
        ours.close()
        if process.poll() is None:
            process.kill()
        process.wait()


def _gate(memory: GuestMemoryMmap, sock: socket.socket, atomic: bool) -> None:
    """Start a race on both sides; the test process counts as one of the two racers."""
    memory.write_atomic(u64(READY), 0)
    memory.write_atomic(u64(GO), 0)
    _send(sock, "race atomic" if atomic else "race plain")
    deadline = time.monotonic() + TIMEOUT
    while memory.read_atomic(u64(READY)) < 1:
        assert time.monotonic() < deadline, "the peer never reached the gate"
    memory.write_atomic(u64(GO), 1)
    _race(memory, atomic, INCREMENTS)
    assert _line(sock) == "raced"


@needs_8_byte_atomics
def test_peer_process_sees_every_write_both_ways() -> None:
    """Bulk, typed and atomic writes cross in both directions; the peer cannot truncate;
    concurrent fetch_add loses nothing while plain read-then-write loses updates."""
    with shared_memory() as memory, peer_process() as (sock, process):
        memory.write_slice(GuestAddress(BOUNDARY - 16), PARENT_BYTES)
        memory.write_atomic(u64(PARENT_ATOMIC), 0xFEED)
        send_memory(sock, memory)

        assert _line(sock) == "child wrote"
        assert memory.read_bytes(GuestAddress(BOUNDARY - 8), len(CHILD_BYTES)) == CHILD_BYTES
        assert memory.read_atomic(u64(CHILD_ATOMIC)) == 0x1122_3344_5566_7788
        assert memory.read_atomic(u64(PARENT_ATOMIC)) == 0xBEEF
        assert memory.read_atomic(u64(FLAGS)) == 0b01
        assert memory.read_obj_unaligned(GuestAddress(FILE_START + 5),
                                         ctypes.c_uint32) == 0xC0DE_CAFE

        memory.write_slice(GuestAddress(BOUNDARY - 20), LATE_BYTES)
        memory.fetch_or(u64(FLAGS), 0b10)
        assert memory.swap(u64(CHILD_ATOMIC), 42) == 0x1122_3344_5566_7788
        _send(sock, "parent wrote again")

        _gate(memory, sock, atomic=True)
        atomic_total = memory.read_atomic(u64(COUNTER_ATOMIC))

        def plain_race() -> int:
            memory.write_atomic(u64(COUNTER_PLAIN), 0)
            _gate(memory, sock, atomic=False)
            return memory.read_atomic(u64(COUNTER_PLAIN))

        plain_total = provoke(plain_race, lambda total: total < 2 * INCREMENTS,
                              attempts=CONTROL_ATTEMPTS,
                              what="the non-atomic read-then-write losing an update")
        _send(sock, "done")
        stdout, stderr = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, stderr
        report = json.loads(stdout)

        file_region = memory.regions()[2]
        assert file_region.mapping.fd is not None
        on_file = os.pread(file_region.mapping.fd, 9, FILE_OFFSET)

    assert report["layout"] == [[MEMFD_STARTS[0], 2 * PAGE, False],
                                [MEMFD_STARTS[1], 2 * PAGE, False],
                                [FILE_START, PAGE, False]]
    assert report["parent_bytes"] == PARENT_BYTES.decode()
    assert report["parent_atomic"] == 0xFEED
    assert report["file_bytes"] == FILE_BYTES.decode()
    assert report["cas"] == [True, 0xFEED]
    assert report["late_bytes"] == LATE_BYTES.decode()
    assert report["flags"] == 0b11
    assert report["swapped"] == 42
    assert report["truncate"] == ["PermissionError", "PermissionError"]
    assert on_file == FILE_BYTES[:5] + (0xC0DE_CAFE).to_bytes(4, sys.byteorder), \
        "the peer's write reached the shared file at its offset"
    assert atomic_total == 2 * INCREMENTS, "fetch_add from two processes lost updates"
    assert 0 < plain_total < 2 * INCREMENTS


def test_read_only_region_is_shared_read_only() -> None:
    """A read-only region arrives read-only: the peer reads it and its stores are refused."""
    with tempfile.TemporaryFile() as backing:
        backing.write(b"read-only page".ljust(PAGE, b"\0"))
        backing.flush()
        memory = GuestMemoryMmap.from_ranges_with_files(
            [(GuestAddress(0), PAGE, FileOffset(backing.fileno(), 0))], read_only=True)
        ours, theirs = socket.socketpair()
        with ours, theirs:
            send_memory(ours, memory)
            # Received in this process: receive_memory maps independently of the sender
            # (a plain file, so the sender is trusted explicitly).
            received = receive_memory(theirs, trust_unsealed=True)
    region = received.regions()[0]
    assert region.read_only
    assert received.read_bytes(GuestAddress(0), 14) == b"read-only page"
    with pytest.raises(ReadOnlyRegion):
        received.write_slice(GuestAddress(0), b"x")
    with pytest.raises(ReadOnlyRegion):
        received.write_atomic(u64(8), 1)


def test_anonymous_memory_is_not_shareable() -> None:
    """Private or fd-less memory cannot be sent; the error names the region."""
    for memory in (GuestMemoryMmap.from_ranges([(GuestAddress(0x5000), PAGE)]),
                   GuestMemoryMmap.from_ranges([(GuestAddress(0x5000), PAGE)], shared=True)):
        ours, theirs = socket.socketpair()
        with ours, theirs, pytest.raises(NotShareable) as raised:
            send_memory(ours, memory)
        assert raised.value.start == 0x5000


def test_received_fds_are_not_leaked() -> None:
    """Every descriptor the receiver opens (received, duplicated, mmap's own) is closed
    once the received memory is dropped."""
    memory = GuestMemoryMmap.from_ranges_memfd([(GuestAddress(0), PAGE),
                                                (GuestAddress(PAGE), PAGE)])
    ours, theirs = socket.socketpair()
    with ours, theirs:
        gc.collect()  # earlier tests' garbage must not close its fds during the count
        before = len(os.listdir("/proc/self/fd"))
        send_memory(ours, memory)
        received = receive_memory(theirs)
        assert len(os.listdir("/proc/self/fd")) > before
        received.write_slice(GuestAddress(PAGE - 2), b"xy!!")
        assert memory.read_bytes(GuestAddress(PAGE - 2), 4) == b"xy!!"
        del received
        gc.collect()
        assert len(os.listdir("/proc/self/fd")) == before


if __name__ == "__main__":
    with socket.socket(fileno=int(sys.argv[1])) as connection:
        print(json.dumps(peer(connection)))
