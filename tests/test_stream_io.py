"""Zero-copy stream I/O across regions: real files (with and without a file offset),
pipes and socket pairs, with partial counts checked byte for byte.

Layout: regions A and B adjacent, a hole, region C, a read-only region, and for the
bounce-buffer path a device region and a pread/pwrite file region next to an mmap.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import random
import socket
import tempfile
from collections.abc import Generator, Iterator
from contextlib import contextmanager, suppress
from typing import Final

import pytest
from support import ByteDevice

from vm_memory import (
    DeviceRegion,
    FileOffset,
    FileRegion,
    GuestAddress,
    GuestMemory,
    GuestMemoryMmap,
    GuestRegionMmap,
    InvalidArgumentType,
    InvalidGuestAddress,
    MmapRegion,
    PartialBuffer,
    ReadOnlyRegion,
)
from vm_memory.stream_io import IOV_MAX

PAGE: Final = mmap.PAGESIZE
A: Final = 0x10_0000
B: Final = A + 2 * PAGE
"""Adjacent to A: A and B form one backed range of 3 pages."""
HOLE: Final = B + PAGE
C: Final = 0x20_0000
READ_ONLY: Final = C + 2 * PAGE
"""Adjacent to C, read-only."""
BOUNDARY: Final = B


@pytest.fixture
def memory() -> Iterator[GuestMemoryMmap]:
    with tempfile.TemporaryFile() as backing:
        backing.write(b"R" * PAGE)
        backing.flush()
        yield GuestMemoryMmap.from_ranges_with_files(
            [(GuestAddress(A), 2 * PAGE, None), (GuestAddress(B), PAGE, None),
             (GuestAddress(C), 2 * PAGE, None),
             (GuestAddress(READ_ONLY), PAGE, FileOffset(backing.fileno(), 0))],
            read_only=True)


@contextmanager
def pipe() -> Generator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    try:
        yield read_end, write_end
    finally:
        for fd in (read_end, write_end):
            with suppress(OSError):
                os.close(fd)


@contextmanager
def data_file(data: bytes) -> Generator[int]:
    with tempfile.TemporaryFile() as backing:
        backing.write(data)
        backing.flush()
        fd = os.dup(backing.fileno())
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            yield fd
        finally:
            os.close(fd)


def noise(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


# ---- Files -----------------------------------------------------------------------------


def test_file_fd_read_and_write_across_regions(memory: GuestMemoryMmap) -> None:
    data = noise(2 * PAGE)
    start = BOUNDARY - PAGE - 5
    with data_file(data) as fd:
        assert memory.read_from(GuestAddress(start), fd, 2 * PAGE) == 2 * PAGE
        assert os.lseek(fd, 0, os.SEEK_CUR) == 2 * PAGE, "readv advanced the position"
        assert memory.read_bytes(GuestAddress(start), 2 * PAGE) == data
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        assert memory.write_to(GuestAddress(start), fd, 2 * PAGE) == 2 * PAGE
        assert os.pread(fd, 4 * PAGE, 0) == data


def test_file_offset_uses_preadv_and_pwritev(memory: GuestMemoryMmap) -> None:
    """At a file offset: the data comes from/goes to that offset; the position stays."""
    data = noise(4 * PAGE, 1)
    with data_file(data) as fd:
        os.lseek(fd, 123, os.SEEK_SET)
        start = BOUNDARY - 100
        assert memory.read_from(GuestAddress(start), fd, 300, file_offset=PAGE + 7) == 300
        assert memory.read_bytes(GuestAddress(start), 300) == data[PAGE + 7:PAGE + 307]
        assert os.lseek(fd, 0, os.SEEK_CUR) == 123
        # Fewer bytes left in the file than asked: the count says so exactly.
        assert memory.read_from(GuestAddress(A), fd, 3 * PAGE, file_offset=3 * PAGE + 1) == \
            PAGE - 1
        memory.write_slice(GuestAddress(start), b"<" + b"=" * 198 + b">")
        assert memory.write_to(GuestAddress(start), fd, 200, file_offset=10) == 200
        assert os.pread(fd, 202, 9) == data[9:10] + b"<" + b"=" * 198 + b">" + data[210:211]
        assert os.lseek(fd, 0, os.SEEK_CUR) == 123


def test_file_objects_unbuffered_and_buffered(memory: GuestMemoryMmap) -> None:
    data = noise(3 * PAGE, 2)
    with tempfile.NamedTemporaryFile() as named:
        named.write(data)
        named.flush()
        with open(named.name, "rb", buffering=0) as raw:
            assert memory.read_from(GuestAddress(A + 1), raw, 3 * PAGE) == 3 * PAGE - 1
            assert memory.read_bytes(GuestAddress(A + 1), 3 * PAGE - 1) == data[:-1]
        with open(named.name, "rb") as buffered:
            buffered.read(10)
            assert memory.read_from(GuestAddress(BOUNDARY - 3), buffered, 6) == 6
            assert memory.read_bytes(GuestAddress(BOUNDARY - 3), 6) == data[10:16]
        with open(named.name, "wb") as out:
            memory.write_all_to(GuestAddress(A), out, 3 * PAGE)
        with open(named.name, "rb") as back:
            assert back.read() == memory.read_bytes(GuestAddress(A), 3 * PAGE)
    ours, _ = socket.socketpair()
    with ours, pytest.raises(InvalidArgumentType):
        memory.read_from(GuestAddress(A), ours, 1, file_offset=0)


# ---- Pipes -----------------------------------------------------------------------------


def test_pipe_with_less_data_than_asked(memory: GuestMemoryMmap) -> None:
    with pipe() as (read_end, write_end):
        os.write(write_end, b"abc" * 1000)
        assert memory.read_from(GuestAddress(BOUNDARY - 1500), read_end, 2 * PAGE) == 3000
        assert memory.read_bytes(GuestAddress(BOUNDARY - 1500), 3000) == b"abc" * 1000
        os.close(write_end)
        assert memory.read_from(GuestAddress(A), read_end, 100) == 0, "end of stream"


def test_hole_stops_the_range_and_leaves_the_rest_in_the_stream(
        memory: GuestMemoryMmap) -> None:
    data = noise(4 * PAGE, 3)
    with pipe() as (read_end, write_end):
        os.write(write_end, data)
        assert memory.read_from(GuestAddress(B + 10), read_end, 2 * PAGE) == PAGE - 10
        assert os.read(read_end, 4 * PAGE) == data[PAGE - 10:], "nothing else consumed"
        with pytest.raises(InvalidGuestAddress):
            memory.read_from(GuestAddress(HOLE), read_end, 10)
        with pytest.raises(InvalidGuestAddress):
            memory.write_to(GuestAddress(HOLE + 5), write_end, 10)
    assert memory.read_bytes(GuestAddress(B + 10), PAGE - 10) == data[:PAGE - 10]


def test_read_only_region_refuses_before_reading_anything(memory: GuestMemoryMmap) -> None:
    with pipe() as (read_end, write_end):
        os.write(write_end, b"x" * PAGE)
        before = memory.read_bytes(GuestAddress(C), 2 * PAGE)
        with pytest.raises(ReadOnlyRegion) as raised:
            memory.read_from(GuestAddress(C + PAGE), read_end, 2 * PAGE)
        assert raised.value.address == READ_ONLY
        assert os.read(read_end, 2 * PAGE) == b"x" * PAGE, "the stream was not touched"
        assert memory.read_bytes(GuestAddress(C), 2 * PAGE) == before
        # Out of guest memory, a read-only region is fine.
        assert memory.write_to(GuestAddress(C + 2 * PAGE - 2), write_end, 4) == 4
        assert os.read(read_end, 4) == bytes(2) + b"RR"


def test_non_blocking_pipe_partial_write_count_is_exact() -> None:
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 96 * 1024),
                                          (GuestAddress(96 * 1024), 160 * 1024)])
    data = noise(256 * 1024, 4)
    memory.write_slice(GuestAddress(0), data)
    with pipe() as (read_end, write_end):
        os.set_blocking(write_end, False)
        capacity = fcntl.fcntl(write_end, 1032)  # F_GETPIPE_SZ
        written = memory.write_to(GuestAddress(0), write_end, len(data))
        assert 0 < written < len(data)
        assert written <= capacity
        received = b""
        while len(received) < written:
            received += os.read(read_end, written - len(received))
        os.set_blocking(read_end, False)
        with pytest.raises(BlockingIOError):
            os.read(read_end, 1)
        assert received == data[:written]


# ---- Socket pairs ------------------------------------------------------------------------


def test_socket_pair_across_regions(memory: GuestMemoryMmap) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        data = noise(PAGE + 200, 5)
        theirs.sendall(data)
        start = BOUNDARY - PAGE - 100
        assert memory.read_from(GuestAddress(start), ours, PAGE + 200) == PAGE + 200
        assert memory.read_bytes(GuestAddress(start), PAGE + 200) == data
        theirs.sendall(b"short")
        assert memory.read_from(GuestAddress(start), ours, 100) == 5
        memory.write_all_to(GuestAddress(A), ours, 3 * PAGE)
        received = b""
        while len(received) < 3 * PAGE:
            received += theirs.recv(3 * PAGE)
        assert received == memory.read_bytes(GuestAddress(A), 3 * PAGE)


def test_non_blocking_socket_partial_send_count_is_exact() -> None:
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 1 << 20),
                                          (GuestAddress(1 << 20), 1 << 20)])
    data = noise(2 << 20, 6)
    memory.write_slice(GuestAddress(0), data)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        ours.setblocking(False)
        sent = memory.write_to(GuestAddress(0), ours, len(data))
        assert 0 < sent < len(data)
        received = b""
        while len(received) < sent:
            received += theirs.recv(sent - len(received))
        theirs.setblocking(False)
        with pytest.raises(BlockingIOError):
            theirs.recv(1)
        assert received == data[:sent]


def test_read_exact_from_reports_the_completed_count(memory: GuestMemoryMmap) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"0123456789" * 30)
        memory.read_exact_from(GuestAddress(BOUNDARY - 150), ours, 200)
        assert memory.read_bytes(GuestAddress(BOUNDARY - 150), 200) == (b"0123456789" * 20)
        theirs.shutdown(socket.SHUT_WR)  # 100 bytes left, then end of stream
        with pytest.raises(PartialBuffer) as raised:
            memory.read_exact_from(GuestAddress(A), ours, 250)
        assert (raised.value.expected, raised.value.completed) == (250, 100)
        assert memory.read_bytes(GuestAddress(A), 100) == b"0123456789" * 10


def test_exact_io_into_a_hole_reports_the_completed_count(memory: GuestMemoryMmap) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"y" * (2 * PAGE))
        with pytest.raises(PartialBuffer) as raised:
            memory.read_exact_from(GuestAddress(HOLE - 100), ours, 200)
        assert (raised.value.completed, raised.value.available) == (100, 100)
        with pytest.raises(PartialBuffer) as raised:
            memory.write_all_to(GuestAddress(HOLE - 100), ours, 200)
        assert raised.value.completed == 100


# ---- Regions without host memory: bounce buffers ---------------------------------------


@contextmanager
def mixed_memory() -> Generator[tuple[GuestMemory, ByteDevice, int]]:
    """mmap [0, P) | device [P, 2P) | file region [2P, 3P) | mmap [3P, 4P)."""
    device = ByteDevice(b"\xdd" * PAGE)
    with tempfile.TemporaryFile() as backing:
        backing.write(b"\xff" * (2 * PAGE))
        backing.flush()
        memory = GuestMemory([
            GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(0)),
            DeviceRegion(device, GuestAddress(PAGE), PAGE),
            FileRegion(backing.fileno(), GuestAddress(2 * PAGE), PAGE, file_offset=PAGE),
            GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(3 * PAGE)),
        ])
        yield memory, device, backing.fileno()


def test_bounce_buffers_in_the_path() -> None:
    with mixed_memory() as (memory, device, fd):
        data = noise(4 * PAGE, 7)
        with pipe() as (read_end, write_end):
            os.write(write_end, data)
            assert memory.read_from(GuestAddress(10), read_end, 4 * PAGE - 20) == \
                4 * PAGE - 20
        assert device.data == data[PAGE - 10:2 * PAGE - 10]
        assert os.pread(fd, PAGE, PAGE) == data[2 * PAGE - 10:3 * PAGE - 10]
        assert memory.read_bytes(GuestAddress(10), 4 * PAGE - 20) == data[:4 * PAGE - 20]
        ours, theirs = socket.socketpair()
        with ours, theirs:
            assert memory.write_to(GuestAddress(PAGE - 5), ours, 2 * PAGE + 10) == \
                2 * PAGE + 10
            received = b""
            while len(received) < 2 * PAGE + 10:
                received += theirs.recv(4 * PAGE)
        assert received == data[PAGE - 15:3 * PAGE - 5]


def test_partial_read_into_bounce_buffer_flushes_only_what_arrived() -> None:
    with mixed_memory() as (memory, device, fd):
        with pipe() as (read_end, write_end):
            os.write(write_end, b"z" * (PAGE + 100))
            assert memory.read_from(GuestAddress(50), read_end, 3 * PAGE) == PAGE + 100
        assert device.data == b"z" * 150 + b"\xdd" * (PAGE - 150)
        assert os.pread(fd, PAGE, PAGE) == b"\xff" * PAGE
        with data_file(b"q" * PAGE) as source:
            assert memory.read_from(GuestAddress(2 * PAGE - 8), source, 16,
                                    file_offset=0) == 16
        assert device.data[-8:] == b"q" * 8
        assert os.pread(fd, 8, PAGE) == b"q" * 8


# ---- Vectored: several guest ranges, one call -------------------------------------------


def test_vectored_read_and_write_across_ranges_and_regions(memory: GuestMemoryMmap) -> None:
    """A scatter list of three ranges (one crossing from A into B) in one call each way,
    at a file offset; the bytes land in order and come back out in order."""
    ranges = [(GuestAddress(C + 100), 50), (GuestAddress(B - 10), 30),
              (GuestAddress(A), 7)]
    data = noise(87, 5)
    with tempfile.TemporaryFile() as handle:
        handle.write(b"z" * 10 + data)
        handle.flush()
        assert memory.read_vectored_from(ranges, handle.fileno(), file_offset=10) == 87
        assert memory.read_bytes(GuestAddress(C + 100), 50) == data[:50]
        assert memory.read_bytes(GuestAddress(B - 10), 30) == data[50:80]
        assert memory.read_bytes(GuestAddress(A), 7) == data[80:]
        handle.truncate(0)
        assert memory.write_vectored_to(ranges, handle.fileno(), file_offset=0) == 87
        handle.seek(0)
        assert handle.read() == data


def test_vectored_refusals_come_before_any_byte_moves(memory: GuestMemoryMmap) -> None:
    """A range into a hole, a read-only range or a bad item: the typed error, the stream
    untouched and guest memory unchanged."""
    before = memory.read_bytes(GuestAddress(A), 3 * PAGE)
    with pipe() as (read_end, write_end):
        os.write(write_end, b"x" * 100)
        for ranges, error in (
                ([(GuestAddress(A), 10), (GuestAddress(HOLE - 5), 10)], PartialBuffer),
                ([(GuestAddress(A), 10), (GuestAddress(READ_ONLY), 10)], ReadOnlyRegion),
                ([(GuestAddress(A), 10), (A, 10)], InvalidArgumentType),
                ([(GuestAddress(A), 10), "junk"], InvalidArgumentType)):
            with pytest.raises(error):
                memory.read_vectored_from(ranges, read_end)  # type: ignore[arg-type]
        assert os.read(read_end, 200) == b"x" * 100, "nothing consumed"
    assert memory.read_bytes(GuestAddress(A), 3 * PAGE) == before
    with pipe() as (_, write_end), pytest.raises(PartialBuffer):
        memory.write_vectored_to([(GuestAddress(HOLE - 5), 10)], write_end)


def test_vectored_io_takes_more_ranges_than_one_system_call(
        memory: GuestMemoryMmap) -> None:
    """Twice IOV_MAX one-byte ranges: batched, every byte in its place."""
    ranges = [(GuestAddress(A + 2 * index), 1) for index in range(min(2 * IOV_MAX, PAGE))]
    data = noise(len(ranges), 8)
    with tempfile.TemporaryFile() as handle:
        handle.write(data)
        handle.flush()
        assert memory.read_vectored_from(ranges, handle.fileno(), file_offset=0) == len(data)
    assert memory.read_bytes(GuestAddress(A), 2 * len(ranges))[::2] == data
