"""Dirty-page tracking: every write path marks exactly the pages it wrote, no read path
marks anything, and a take-and-clear loop beside concurrent writers loses no page.

The concurrency harness is also run with a naive take (snapshot the marks, then clear
them: two steps, not one atomic exchange) against the same bitmap, and must catch it
losing pages; and with writes that bypass the library's marking, and must catch those.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Generator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final

import pytest
from host_assumptions import WIDE_ATOMIC, wide_atomic
from support import ByteDevice, provoke

from vm_memory import (
    AlignedGuestAddress,
    DeviceRegion,
    DirtyBitmap,
    GuestAddress,
    GuestMemory,
    GuestMemoryMmap,
    GuestRegionMmap,
    InvalidAlignment,
    MmapRegion,
    PartialBuffer,
)

PAGE: Final = mmap.PAGESIZE
FIRST: Final = 0x10_0000
SECOND: Final = FIRST + 4 * PAGE
"""Adjacent to the first region."""
DEVICE: Final = 0x40_0000


def u64(address: int) -> AlignedGuestAddress[ctypes.c_uint64]:
    return AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(address))


def u32(address: int) -> AlignedGuestAddress[ctypes.c_uint32]:
    return AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(address))


@pytest.fixture
def memory() -> GuestMemory:
    """Two adjacent 4-page mmap regions and a 2-page device region, tracked."""
    built = GuestMemory([
        GuestRegionMmap(MmapRegion.anonymous(4 * PAGE), GuestAddress(FIRST)),
        GuestRegionMmap(MmapRegion.anonymous(4 * PAGE), GuestAddress(SECOND)),
        DeviceRegion(ByteDevice(bytes(2 * PAGE)), GuestAddress(DEVICE), 2 * PAGE),
    ])
    built.track_dirty_pages()
    assert built.take_dirty_pages() == []
    return built


def pages(*addresses: int) -> list[GuestAddress]:
    return [GuestAddress(address) for address in sorted(addresses)]


@contextmanager
def pipe_with(data: bytes) -> Generator[int]:
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
        yield read_end
    finally:
        os.close(read_end)
        os.close(write_end)


# ---- Each write path marks what it wrote --------------------------------------------

WritePath = Callable[[GuestMemory], object]
EDGE: Final = SECOND - 4
"""Four bytes before the boundary between the two regions (and two pages)."""

def _zero_copy_write(memory: GuestMemory) -> None:
    view = memory.get_slice(GuestAddress(SECOND + PAGE - 8), 16)
    view.as_memoryview()[:] = b"z" * 16
    view.mark_dirty()


def _read_from_pipe(memory: GuestMemory, address: int, count: int) -> int:
    with pipe_with(b"p" * count) as source:
        return memory.read_from(GuestAddress(address), source, count)


def _read_exact_from_socket(memory: GuestMemory, address: int, count: int) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"s" * count)
        memory.read_exact_from(GuestAddress(address), ours, count)


WRITE_PATHS: Final[dict[str, tuple[WritePath, list[int]]]] = {
    "write": (lambda m: m.write(GuestAddress(EDGE), b"12345678"),
              [SECOND - PAGE, SECOND]),
    "write_slice": (lambda m: m.write_slice(GuestAddress(FIRST + PAGE - 1), b"ab"),
                    [FIRST, FIRST + PAGE]),
    "write_obj": (lambda m: m.write_obj(u64(FIRST + 2 * PAGE + 8), 1),
                  [FIRST + 2 * PAGE]),
    "write_obj_unaligned": (lambda m: m.write_obj_unaligned(GuestAddress(EDGE + 1),
                                                            ctypes.c_uint64, 7),
                            [SECOND - PAGE, SECOND]),
    "write_atomic": (lambda m: m.write_atomic(wide_atomic(SECOND + PAGE), 1), [SECOND + PAGE]),
    "swap": (lambda m: m.swap(u32(SECOND + 3 * PAGE), 1), [SECOND + 3 * PAGE]),
    "compare_exchange": (lambda m: m.compare_exchange(wide_atomic(FIRST), 0, 9), [FIRST]),
    "fetch_add": (lambda m: m.fetch_add(wide_atomic(FIRST + 8), 1), [FIRST]),
    "fetch_sub": (lambda m: m.fetch_sub(wide_atomic(FIRST + PAGE), 1), [FIRST + PAGE]),
    "fetch_and": (lambda m: m.fetch_and(wide_atomic(SECOND), 1), [SECOND]),
    "fetch_or": (lambda m: m.fetch_or(wide_atomic(SECOND + 2 * PAGE), 1), [SECOND + 2 * PAGE]),
    "fetch_xor": (lambda m: m.fetch_xor(wide_atomic(SECOND + 16), 1), [SECOND]),
    "slice.write": (lambda m: m.get_slice(GuestAddress(FIRST), 4 * PAGE).write(
        PAGE - 2, b"abcd"), [FIRST, FIRST + PAGE]),
    "slice.copy_from": (lambda m: m.get_slice(GuestAddress(SECOND + PAGE), 8).copy_from(
        b"x" * 100), [SECOND + PAGE]),
    "ref.store": (lambda m: m.get_slice(GuestAddress(FIRST), 64).get_ref(
        ctypes.c_uint32, 4).store(3), [FIRST]),
    "ref.write_atomic": (lambda m: m.get_slice(GuestAddress(SECOND), 64).get_ref(
        ctypes.c_uint32, 4).write_atomic(3), [SECOND]),
    "ref.fetch_add": (lambda m: m.get_slice(GuestAddress(SECOND + PAGE), 64).get_ref(
        WIDE_ATOMIC, 8).fetch_add(3), [SECOND + PAGE]),
    "ref.swap": (lambda m: m.get_slice(GuestAddress(FIRST + 3 * PAGE), 64).get_ref(
        WIDE_ATOMIC, 8).swap(3), [FIRST + 3 * PAGE]),
    "ref.compare_exchange": (lambda m: m.get_slice(GuestAddress(FIRST + PAGE), 64)
                             .get_ref(WIDE_ATOMIC, 0).compare_exchange(0, 1),
                             [FIRST + PAGE]),
    "array_ref.store": (lambda m: m.get_slice(GuestAddress(FIRST), 4 * PAGE)
                        .get_array_ref(ctypes.c_uint32, 0, PAGE)[PAGE // 4 * 3].store(1),
                        [FIRST + 3 * PAGE]),
    "as_memoryview+mark_dirty": (_zero_copy_write, [SECOND, SECOND + PAGE]),
    "read_from": (lambda m: _read_from_pipe(m, EDGE, 4 + PAGE + 1),
                  [SECOND - PAGE, SECOND, SECOND + PAGE]),
    "read_exact_from": (lambda m: _read_exact_from_socket(m, FIRST + 3 * PAGE + 10, 20),
                        [FIRST + 3 * PAGE]),
    "device write_slice": (lambda m: m.write_slice(GuestAddress(DEVICE + PAGE - 2), b"dev!"),
                           [DEVICE, DEVICE + PAGE]),
    "device write_atomic": (lambda m: m.write_atomic(wide_atomic(DEVICE + PAGE + 8), 5),
                            [DEVICE + PAGE]),
    "device fetch_add": (lambda m: m.fetch_add(wide_atomic(DEVICE), 5), [DEVICE]),
    "device read_from": (lambda m: _read_from_pipe(m, DEVICE + 10, 30), [DEVICE]),
}


@pytest.mark.parametrize("path", WRITE_PATHS)
def test_write_path_marks_exactly_its_pages(memory: GuestMemory, path: str) -> None:
    write, expected = WRITE_PATHS[path]
    write(memory)
    assert memory.dirty_pages() == pages(*expected)
    assert memory.dirty_pages() == pages(*expected), "dirty_pages does not clear"
    assert memory.take_dirty_pages() == pages(*expected)
    assert memory.take_dirty_pages() == [], "take cleared exactly what it returned"


def test_failed_compare_exchange_and_refused_writes_mark_nothing(memory: GuestMemory) -> None:
    assert memory.compare_exchange(wide_atomic(FIRST), 1, 2) == (False, 0)
    with pytest.raises(PartialBuffer):
        memory.write_slice(GuestAddress(SECOND + 4 * PAGE - 2), b"past the end")
    with pytest.raises(PartialBuffer):
        memory.write_obj_unaligned(GuestAddress(SECOND + 4 * PAGE - 4), ctypes.c_uint64, 1)
    assert memory.dirty_pages() == []


# ---- No read path marks --------------------------------------------------------------

def _slice_reads(memory: GuestMemory) -> None:
    view = memory.get_slice(GuestAddress(FIRST), 4 * PAGE)
    view.read(5, bytearray(10))
    view.copy_to(bytearray(PAGE))
    view.to_bytes()
    bytes(view.as_memoryview()[:16])
    view.split_at(PAGE)
    view.subslice(1, 2)


def _ref_reads(memory: GuestMemory) -> None:
    view = memory.get_slice(GuestAddress(SECOND), 64)
    view.get_ref(ctypes.c_uint64, 0).load()
    view.get_ref(WIDE_ATOMIC, 8).read_atomic()
    [ref.load() for ref in view.get_array_ref(ctypes.c_uint16, 0, 32)]


def _write_to_socket(memory: GuestMemory) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        memory.write_all_to(GuestAddress(EDGE), ours, 64)
        memory.write_all_to(GuestAddress(DEVICE), ours, 64)


READ_PATHS: Final[dict[str, WritePath]] = {
    "read": lambda m: m.read(GuestAddress(EDGE), bytearray(64)),
    "read_slice": lambda m: m.read_slice(GuestAddress(EDGE), bytearray(64)),
    "read_bytes": lambda m: m.read_bytes(GuestAddress(FIRST), 8 * PAGE),
    "read_obj": lambda m: m.read_obj(u64(FIRST + 8)),
    "read_obj_unaligned": lambda m: m.read_obj_unaligned(GuestAddress(EDGE + 1),
                                                         ctypes.c_uint64),
    "read_atomic": lambda m: m.read_atomic(wide_atomic(SECOND)),
    "slice reads": _slice_reads,
    "refs": _ref_reads,
    "write_to": _write_to_socket,
    "get_slices": lambda m: m.get_slices(GuestAddress(FIRST), 8 * PAGE),
    "host address": lambda m: m.get_host_address(GuestAddress(SECOND)),
    "device reads": lambda m: (m.read_bytes(GuestAddress(DEVICE), 2 * PAGE),
                               m.read_atomic(wide_atomic(DEVICE))),
}


@pytest.mark.parametrize("path", READ_PATHS)
def test_read_path_marks_nothing(memory: GuestMemory, path: str) -> None:
    READ_PATHS[path](memory)
    assert memory.dirty_pages() == []


# ---- Bitmap details ------------------------------------------------------------------


def test_page_size_is_configurable() -> None:
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 256 * 1024)])
    memory.track_dirty_pages(64 * 1024)
    memory.write_slice(GuestAddress(64 * 1024 - 1), b"ab")
    memory.write_obj(u64(200 * 1024), 1)
    assert memory.take_dirty_pages() == pages(0, 64 * 1024, 192 * 1024)
    with pytest.raises(InvalidAlignment):
        DirtyBitmap(PAGE, 3000)


def test_bitmap_counts_a_partial_last_page() -> None:
    bitmap = DirtyBitmap(10 * PAGE + 1)
    assert bitmap.page_count == 11
    bitmap.mark(10 * PAGE, 1)
    bitmap.mark(0, 2 * PAGE + 1)
    assert bitmap.dirty_pages() == [0, 1, 2, 10]
    assert bitmap.take_dirty_pages() == [0, 1, 2, 10]
    assert bitmap.dirty_pages() == []


# ---- Concurrent writers and a take-and-clear loop -------------------------------------

CONTROL_ATTEMPTS: Final = 5
"""Runs of a control, at most, until it shows what it must (see `support.provoke`)."""
HARNESS_PAGES: Final = 4096
"""Pages per region (two regions, 16 MiB each; a round writes each page once)."""


def naive_take(memory: GuestMemory) -> list[GuestAddress]:
    """Snapshot the marks, then clear the bitmap: a mark landing between the two is lost."""
    taken: list[GuestAddress] = []
    for region in memory.regions():
        assert region.dirty is not None
        taken += [GuestAddress(region.start_value + page * region.dirty.page_size)
                  for page in region.dirty.dirty_pages()]
        region.dirty.clear()
    return taken


MIN_TAKES: Final = 10
"""Takes beside the writers the lossless run needs before it proves anything."""
MAX_ROUNDS_FOR_TAKES: Final = 200


@dataclass
class HarnessResult:
    """Totals over every round of the harness."""

    rounds: int = 0
    written: int = 0
    takes: int = 0
    lost: set[int] = field(default_factory=set[int])
    """Pages written in a round but in none of that round's takes."""
    lost_count: int = 0
    """Losses summed over rounds (a page may be lost in several)."""
    spurious: set[int] = field(default_factory=set[int])
    """Pages taken in a round but never written in it."""


def run_harness(take: Callable[[GuestMemory], list[GuestAddress]], seconds: float, *,
                min_rounds: int = 1, min_takes: int = 0, writers: int = 2,
                bypass_every: int = 0) -> HarnessResult:
    """Rounds of: writer threads write every page once, in random order and through
    varied write paths, while a loop takes the dirty set; after the writers finish, one
    final take. In each round the union of the takes must equal the pages written (each
    page is written once per round, so a lost mark cannot hide behind a later rewrite).
    Runs for ``seconds`` and at least ``min_rounds`` rounds, however slow the machine,
    and on until ``min_takes`` takes have run beside the writers (at most
    ``MAX_ROUNDS_FOR_TAKES`` rounds: how many fit in a round depends on the machine, an
    emulator's included, never the count of rounds that proves something). A writer's
    error is raised here, never counted as pages lost (the controls would pass on it).
    """
    memory = GuestMemoryMmap.from_ranges(
        [(GuestAddress(FIRST), HARNESS_PAGES * PAGE),
         (GuestAddress(FIRST + HARNESS_PAGES * PAGE), HARNESS_PAGES * PAGE)])
    memory.track_dirty_pages()
    result = HarnessResult()
    rng = random.Random(1)
    errors: list[Exception] = []

    def writer(pages_to_write: list[int], seed: int) -> None:
        write_rng = random.Random(seed)
        try:
            for count, page in enumerate(pages_to_write, start=1):
                address = page + write_rng.randrange(0, PAGE, 8)
                if bypass_every and count % bypass_every == 0:  # the library never sees it
                    memory.get_slice(GuestAddress(address), 8).as_memoryview()[:] = b"bypass!!"
                elif count % 4 == 0:
                    memory.write_slice(GuestAddress(address), b"written!")
                elif count % 4 == 1:
                    memory.write_obj(u64(address), count)
                elif count % 4 == 2:
                    memory.write_atomic(wide_atomic(address), count)
                else:
                    memory.fetch_or(wide_atomic(address), 1)
        except Exception as error:  # raised below: its unwritten pages are no lost marks
            errors.append(error)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    try:
        deadline = time.monotonic() + seconds
        while (time.monotonic() < deadline or result.rounds < min_rounds
               or (result.takes < min_takes and result.rounds < MAX_ROUNDS_FOR_TAKES)):
            order = [FIRST + index * PAGE for index in range(2 * HARNESS_PAGES)]
            rng.shuffle(order)
            threads = [threading.Thread(target=writer,
                                        args=(order[index::writers], rng.random()))
                       for index in range(writers)]
            taken: set[int] = set()
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                taken.update(address.raw_value() for address in take(memory))
                result.takes += 1
            for thread in threads:
                thread.join()
            if errors:
                raise errors[0]
            taken.update(address.raw_value() for address in memory.take_dirty_pages())
            result.rounds += 1
            result.written += len(order)
            result.lost |= set(order) - taken
            result.lost_count += len(set(order) - taken)
            result.spurious |= taken - set(order)
    finally:
        sys.setswitchinterval(previous)
    return result


def test_take_and_clear_beside_writers_loses_no_page() -> None:
    result = run_harness(lambda memory: memory.take_dirty_pages(), 2.0, min_rounds=3,
                         min_takes=MIN_TAKES)
    assert result.rounds >= 3 and result.takes >= MIN_TAKES, result
    assert result.lost == set() and result.spurious == set()


def test_harness_catches_a_naive_snapshot_then_clear() -> None:
    """The same harness with a two-step take (dirty_pages, then clear) loses pages."""

    def attempt() -> HarnessResult:
        result = run_harness(naive_take, 1.5)
        assert result.spurious == set()
        return result

    provoke(attempt, lambda result: bool(result.lost), attempts=CONTROL_ATTEMPTS,
            what="the naive take losing a page")


def test_harness_catches_writes_that_skip_marking() -> None:
    """Writes through a raw buffer without mark_dirty show up as pages never taken."""
    result = run_harness(lambda memory: memory.take_dirty_pages(), 0.2, bypass_every=5)
    bypassed_per_round = 2 * (HARNESS_PAGES // 5)  # two writers of HARNESS_PAGES each
    assert result.lost_count == result.rounds * bypassed_per_round
