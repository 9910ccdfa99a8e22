"""Split virtqueues, device side against the driver side, honest and hostile."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import unavailable

from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap, Ordering
from vm_memory_virtio import (
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    DriverQueue,
    InvalidAvailIndex,
    InvalidChain,
    InvalidQueueLayout,
    InvalidUsedEntry,
    QueueLayout,
    SplitQueue,
    VirtqDesc,
    VirtqueueError,
    coalesce,
    file_to_guest,
    guest_to_file,
    read_struct,
)

SIZE = 16
MEMORY_SIZE = 0x40000
HOLE_START = 0x40000  # the second region starts after a hole
SECOND = 0x50000


def make_memory() -> GuestMemoryMmap:
    return GuestMemoryMmap.from_ranges([(GuestAddress(0), MEMORY_SIZE),
                                        (GuestAddress(SECOND), 0x10000)], shared=True)


def make_pair(memory: GuestMemoryMmap, *, event_idx: bool = False, indirect: bool = True,
              size: int = SIZE) -> tuple[DriverQueue, SplitQueue]:
    layout = QueueLayout.contiguous(size, GuestAddress(0x1000))
    driver = DriverQueue(memory, layout, event_idx=event_idx)
    return driver, SplitQueue(memory, layout, event_idx=event_idx, indirect=indirect)


def test_honest_chains_come_out_as_published() -> None:
    memory = make_memory()
    driver, queue = make_pair(memory)
    first = driver.add([(0x10000, 16)], [(0x11000, 512), (0x12000, 1)])
    second = driver.add([(0x10000, 16), (0x20000, 4096)], [(0x12000, 1)],
                        indirect_table=GuestAddress(0x30000))
    third = driver.add([(MEMORY_SIZE - 8, 8)], [(SECOND, 0x10000)])
    chains = [queue.pop(), queue.pop(), queue.pop()]
    assert queue.pop() is None
    assert [chain.head for chain in chains if chain] == [first, second, third]
    assert chains[0] is not None and chains[0].readable == [(0x10000, 16)]
    assert chains[0].writable == [(0x11000, 512), (0x12000, 1)]
    assert chains[1] is not None and chains[1].readable == [(0x10000, 16), (0x20000, 4096)]
    assert chains[1].writable_bytes == 1 and chains[1].readable_bytes == 4112
    assert chains[2] is not None and chains[2].writable == [(SECOND, 0x10000)]
    for chain, length in zip(chains, (513, 1, 7), strict=True):
        assert chain is not None
        queue.add_used(chain.head, length)
    assert driver.used() == [(first, 513), (second, 1), (third, 7)]
    assert driver.free_count() == SIZE


@pytest.mark.parametrize("lie", ["not in flight", "returned twice", "index far ahead"])
def test_a_hostile_device_is_refused_by_the_driver_and_consumes_nothing(lie: str) -> None:
    memory = make_memory()
    driver, queue = make_pair(memory)
    heads = [driver.add([(0x10000, 16)], []) for _ in range(2)]
    assert [chain.head for chain in (queue.pop(), queue.pop()) if chain] == heads
    if lie == "not in flight":
        queue.add_used(SIZE - 1, 0)
    elif lie == "returned twice":
        queue.add_used(heads[0], 0)
        queue.add_used(heads[0], 0)
    else:
        memory.write_atomic(queue.layout.used_idx, 5)
    free, next_used = driver.free_count(), driver.next_used
    with pytest.raises(InvalidUsedEntry) as refused:
        driver.used()
    assert lie.rsplit(maxsplit=1)[-1] in str(refused.value)
    assert (driver.free_count(), driver.next_used) == (free, next_used)
    # The control: the same driver takes an honest device's entries.
    honest, honest_queue = make_pair(make_memory())
    honest_heads = [honest.add([(0x10000, 16)], []) for _ in range(2)]
    for head in honest_heads:
        assert honest_queue.pop() is not None
        honest_queue.add_used(head, 0)
    assert [head for head, _ in honest.used()] == honest_heads


def test_ring_indices_wrap_at_16_bits() -> None:
    memory = make_memory()
    driver, queue = make_pair(memory)
    for round_number in range(70_000 // SIZE + 2):
        heads = [driver.add([(0x10000 + i, 1)], []) for i in range(SIZE)]
        popped = [queue.pop() for _ in range(SIZE)]
        assert queue.pop() is None
        assert [chain.head for chain in popped if chain] == heads, round_number
        for chain in popped:
            assert chain is not None
            queue.add_used(chain.head, 0)
        assert [head for head, _ in driver.used()] == heads
    assert queue.next_avail == driver.next_avail and queue.next_avail < 0x10000


def test_event_idx_interrupts_only_when_the_driver_asks() -> None:
    memory = make_memory()
    driver, queue = make_pair(memory, event_idx=True)
    heads = [driver.add([(0x10000, 1)], []) for _ in range(4)]
    for head in heads[:2]:
        queue.pop()
        queue.add_used(head, 0)
    assert queue.needs_notification()  # the first time, always
    driver.set_interrupts(True, used_event=3)  # interrupt me once used idx passes 3
    queue.pop()
    queue.add_used(heads[2], 0)  # used idx 3: not past 3 yet
    assert not queue.needs_notification()
    queue.pop()
    queue.add_used(heads[3], 0)  # used idx 4 passes 3
    assert queue.needs_notification()


def test_no_interrupt_flag_without_event_idx() -> None:
    memory = make_memory()
    driver, queue = make_pair(memory)
    head = driver.add([(0x10000, 1)], [])
    queue.pop()
    queue.add_used(head, 0)
    driver.set_interrupts(False)
    assert not queue.needs_notification()
    driver.set_interrupts(True)
    assert queue.needs_notification()


@pytest.mark.parametrize("event_idx", [False, True])
def test_kick_suppression_and_the_recheck(event_idx: bool) -> None:
    memory = make_memory()
    driver, queue = make_pair(memory, event_idx=event_idx)
    queue.disable_notification()
    old = driver.next_avail
    driver.add([(0x10000, 1)], [])
    if not event_idx:  # with EVENT_IDX the device's avail_event (0) still asks
        assert not driver.kick_needed(old)
    # Re-enabling reports the chain that arrived meanwhile: no kick can be missed.
    assert queue.enable_notification()
    assert queue.pop() is not None
    assert not queue.enable_notification()
    old = driver.next_avail
    driver.add([(0x10000, 1)], [])
    assert driver.kick_needed(old)


# ---- hostile tables ----------------------------------------------------------------------

def publish_raw(driver: DriverQueue, descriptors: dict[int, VirtqDesc], head: int) -> None:
    for index, descriptor in descriptors.items():
        driver.write_descriptor(index, descriptor)
    driver.write_avail_entry(driver.next_avail, head)
    driver.set_avail_idx(driver.next_avail + 1)


NEXT, WRITE, INDIRECT = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT
HOSTILE: dict[str, tuple[dict[int, VirtqDesc], int, str]] = {
    "loop": ({0: VirtqDesc(0x10000, 16, NEXT, 1), 1: VirtqDesc(0x10000, 16, NEXT, 0)}, 0,
             "longer than its table"),
    "self loop": ({0: VirtqDesc(0x10000, 16, NEXT, 0)}, 0, "longer than its table"),
    "next past table": ({0: VirtqDesc(0x10000, 16, NEXT, SIZE)}, 0, "past the table"),
    "head past table": ({}, SIZE + 3, "head index past the table"),
    "buffer past memory": ({0: VirtqDesc(MEMORY_SIZE - 8, 16, 0, 0)}, 0,
                           "not in guest memory"),
    "buffer in a hole": ({0: VirtqDesc(HOLE_START + 0x100, 1, 0, 0)}, 0,
                         "not in guest memory"),
    "length wraps 2**64": ({0: VirtqDesc(2**64 - 1, 0xFFFF_FFFF, 0, 0)}, 0,
                           "not in guest memory"),
    "readable after writable": ({0: VirtqDesc(0x10000, 1, WRITE | NEXT, 1),
                                 1: VirtqDesc(0x10000, 1, 0, 0)}, 0, "after a device-writable"),
    "indirect with next": ({0: VirtqDesc(0x30000, 32, INDIRECT | NEXT, 1)}, 0,
                           "INDIRECT together with NEXT"),
    "indirect of zero bytes": ({0: VirtqDesc(0x30000, 0, INDIRECT, 0)}, 0, "non-zero"),
    "indirect not whole": ({0: VirtqDesc(0x30000, 24, INDIRECT, 0)}, 0, "whole"),
    "indirect longer than allowed": ({0: VirtqDesc(0x30000, 16 * (SIZE + 1), INDIRECT, 0)},
                                     0, "longer than the 16 allowed"),
    "indirect table outside memory": ({0: VirtqDesc(MEMORY_SIZE - 16, 32, INDIRECT, 0)}, 0,
                                      "indirect table unreadable"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_chain_is_refused_with_the_facts(case: str) -> None:
    memory = make_memory()
    driver, queue = make_pair(memory)
    descriptors, head, reason = HOSTILE[case]
    publish_raw(driver, descriptors, head)
    with pytest.raises(InvalidChain, match=reason) as caught:
        queue.pop()
    assert caught.value.head == head
    # Control: the same queue accepts an honest chain at the same place.
    honest_driver, honest_queue = make_pair(make_memory())
    honest_driver.add([(0x10000, 16)], [(0x11000, 1)])
    assert honest_queue.pop() is not None


def test_nested_indirect_and_indirect_without_the_feature() -> None:
    memory = make_memory()
    inner = (VirtqDesc * 1)(VirtqDesc(0x31000, 16, INDIRECT, 0))
    memory.write_slice(GuestAddress(0x30000), bytes(inner))
    driver, queue = make_pair(memory)
    publish_raw(driver, {0: VirtqDesc(0x30000, 16, INDIRECT, 0)}, 0)
    with pytest.raises(InvalidChain, match="nested indirect"):
        queue.pop()
    driver, queue = make_pair(make_memory(), indirect=False)
    driver.add([(0x10000, 16)], [], indirect_table=GuestAddress(0x30000))
    with pytest.raises(InvalidChain, match="without INDIRECT_DESC"):
        queue.pop()


def test_indirect_table_is_copied_before_the_walk() -> None:
    """The device walks its private copy: changing the table after the read changes
    nothing in the chain it returns."""
    memory = make_memory()
    driver, queue = make_pair(memory)
    driver.add([(0x10000, 16)], [(0x11000, 1)], indirect_table=GuestAddress(0x30000))
    chain = queue.pop()
    memory.write_slice(GuestAddress(0x30000), bytes(32))
    assert chain is not None and chain.readable == [(0x10000, 16)]


def test_available_index_far_ahead_is_refused() -> None:
    memory = make_memory()
    driver, queue = make_pair(memory)
    driver.set_avail_idx(SIZE + 1)
    with pytest.raises(InvalidAvailIndex) as caught:
        queue.pop()
    assert (caught.value.avail_idx, caught.value.size) == (SIZE + 1, SIZE)


def test_ring_outside_memory_or_misaligned_is_refused() -> None:
    memory = make_memory()
    with pytest.raises(InvalidQueueLayout, match="not in guest memory"):
        SplitQueue(memory, QueueLayout.contiguous(SIZE, GuestAddress(MEMORY_SIZE - 0x100)))
    with pytest.raises(InvalidQueueLayout, match="aligned"):
        QueueLayout(SIZE, GuestAddress(0x1008), GuestAddress(0x2000), GuestAddress(0x3000))
    with pytest.raises(InvalidQueueLayout, match="power of two"):
        QueueLayout(12, GuestAddress(0x1000), GuestAddress(0x2000), GuestAddress(0x3000))


descriptor_strategy = st.builds(
    VirtqDesc,
    st.one_of(st.integers(0, MEMORY_SIZE + 0x100), st.integers(0, 2**64 - 1),
              st.sampled_from([SECOND, HOLE_START, MEMORY_SIZE - 1])),
    st.one_of(st.integers(0, 0x2000), st.integers(0, 2**32 - 1)),
    st.integers(0, 7), st.integers(0, SIZE + 2))


@settings(max_examples=300)
@given(st.dictionaries(st.integers(0, SIZE - 1), descriptor_strategy, max_size=SIZE),
       st.integers(0, 0xFFFF), st.lists(st.integers(0, SIZE + 2), min_size=1, max_size=4),
       st.booleans())
def test_any_table_gives_a_checked_chain_or_a_typed_error(
        descriptors: dict[int, VirtqDesc], avail_idx: int, heads: list[int],
        indirect: bool) -> None:
    """Whatever the driver writes, `pop` returns only buffers inside guest memory, in
    readable-then-writable order, no more than the queue allows, or raises a
    VirtqueueError: never another exception, never a hang."""
    memory = make_memory()
    driver, queue = make_pair(memory, indirect=indirect)
    for index, descriptor in descriptors.items():
        driver.write_descriptor(index, descriptor)
    for position, head in enumerate(heads):
        driver.write_avail_entry(position, head)
    memory.write_slice(GuestAddress(0x30000), bytes(memory.read_bytes(GuestAddress(0x1000),
                                                                       16 * SIZE)))
    driver.set_avail_idx(avail_idx)
    for _ in range(len(heads)):
        try:
            chain = queue.pop()
        except VirtqueueError:
            return
        if chain is None:
            return
        assert len(chain.readable) + len(chain.writable) <= SIZE
        for address, length in chain.readable + chain.writable:
            assert memory.check_range(GuestAddress(address), length)


# ---- the payload helpers ----------------------------------------------------------------

def test_payload_moves_between_files_and_scattered_buffers(tmp_path: object) -> None:
    import tempfile
    memory = make_memory()
    with tempfile.TemporaryFile() as image:
        data = bytes(range(256)) * 64
        image.write(data)
        image.flush()
        segments = [(0x10003, 100), (MEMORY_SIZE - 4000, 4000), (SECOND, 12284)]
        assert file_to_guest(memory, segments, image.fileno(), 0) == len(data)
        assert memory.read_bytes(GuestAddress(0x10003), 100) == data[:100]
        assert memory.read_bytes(GuestAddress(SECOND), 12284) == data[4100:]
        os.ftruncate(image.fileno(), 0)
        assert guest_to_file(memory, segments, image.fileno(), 512) == len(data)
        image.seek(512)
        assert image.read() == data
        # Past the end of the file: a short count, not an error.
        assert file_to_guest(memory, segments, image.fileno(), len(data)) == 512


def _syscalls() -> tuple[int, int]:
    """This thread's (read, write) system call counts, as the kernel keeps them."""
    if not os.path.exists("/proc/thread-self/io"):
        unavailable("the kernel keeps no per-thread I/O counts (/proc/thread-self/io: "
                    "CONFIG_TASK_IO_ACCOUNTING)")
    with open("/proc/thread-self/io") as stream:
        counts = dict(line.split(": ") for line in stream.read().splitlines())
    return int(counts["syscr"]), int(counts["syscw"])


def test_a_whole_scatter_list_moves_in_one_system_call(tmp_path: object) -> None:
    import tempfile
    memory = make_memory()
    segments = [(0x10000 + 0x1000 * i, 512) for i in range(8)] + [(SECOND, 4096)]
    with tempfile.TemporaryFile() as image:
        image.write(bytes(range(256)) * 32)
        image.flush()
        first = _syscalls()
        counting = _syscalls()[0] - first[0]  # what one count itself costs
        before = _syscalls()
        assert file_to_guest(memory, segments, image.fileno(), 0) == 8192
        assert guest_to_file(memory, segments, image.fileno(), 0) == 8192
        after = _syscalls()
        assert (after[0] - before[0] - counting, after[1] - before[1]) == (1, 1)
        # Control: the same buffers one by one cost a system call each.
        before = _syscalls()
        for address, length in segments:
            memory.read_from(GuestAddress(address), image.fileno(), length, file_offset=0)
        after = _syscalls()
        assert after[0] - before[0] - counting == len(segments)


def test_adjacent_buffers_are_merged_and_nothing_else() -> None:
    assert coalesce([(0x1000, 0x1000), (0x2000, 0x800), (0x2800, 0x800), (0x4000, 16),
                     (0x3000, 16), (0x3010, 0)]) == \
        [(0x1000, 0x2000), (0x4000, 16), (0x3000, 16)]
    assert coalesce([]) == []
    # A request over 256 adjacent guest pages reads as one range: the file's bytes land
    # exactly where they would buffer by buffer.
    import tempfile
    memory = make_memory()
    pages = [(0x20000 + 0x1000 * i, 0x1000) for i in range(16)]
    with tempfile.TemporaryFile() as image:
        data = bytes(range(256)) * 256
        image.write(data)
        image.flush()
        assert file_to_guest(memory, pages[::2] + pages[1::2], image.fileno(), 0) == len(data)
    expected = b"".join(data[0x1000 * (i // 2 if i % 2 == 0 else 8 + i // 2):][:0x1000]
                        for i in range(16))
    assert memory.read_bytes(GuestAddress(0x20000), 0x10000) == expected


def test_a_bad_segment_anywhere_refuses_the_whole_request_untouched() -> None:
    import tempfile

    from vm_memory import GuestRegionMmap, MmapRegion, PartialBuffer, ReadOnlyRegion
    fd = os.memfd_create("read-only")
    os.ftruncate(fd, 0x1000)
    read_only = GuestRegionMmap(MmapRegion.from_file(fd, 0x1000, read_only=True),
                                GuestAddress(0x100000))
    os.close(fd)
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), MEMORY_SIZE)], shared=True)
    memory = memory.insert_region(read_only)
    memory.write_slice(GuestAddress(0x10000), b"\x55" * 1024)
    with tempfile.TemporaryFile() as image:
        image.write(b"\xaa" * 8192)
        image.flush()
        cases = [
            ("past the region", [(0x10000, 1024), (MEMORY_SIZE - 512, 1024)], PartialBuffer),
            ("in no region", [(0x10000, 1024), (HOLE_START + 0x100, 16)], PartialBuffer),
            ("read-only memory", [(0x10000, 1024), (0x100000, 512)], ReadOnlyRegion),
        ]
        for case, segments, error in cases:
            with pytest.raises(error):
                file_to_guest(memory, segments, image.fileno(), 0)
            assert memory.read_bytes(GuestAddress(0x10000), 1024) == b"\x55" * 1024, case
        # The gather side: the file is untouched by a list with a range past memory.
        with pytest.raises(PartialBuffer):
            guest_to_file(memory, [(0x10000, 512), (MEMORY_SIZE - 16, 32)], image.fileno(), 0)
        image.seek(0)
        assert image.read() == b"\xaa" * 8192
        # Control: the same first buffer alone is filled, and writes to the file.
        assert file_to_guest(memory, [(0x10000, 1024)], image.fileno(), 0) == 1024
        assert memory.read_bytes(GuestAddress(0x10000), 1024) == b"\xaa" * 1024
        assert guest_to_file(memory, [(0x100000, 16)], image.fileno(), 0) == 16
        image.seek(0)
        assert image.read(16) == bytes(16)


class Header(ctypes.Structure):
    _fields_ = (("a", ctypes.c_uint32), ("b", ctypes.c_uint64))


def test_read_struct_aligned_unaligned_and_split() -> None:
    memory = make_memory()
    value = Header(7, 2**63 + 5)
    raw = bytes(value)
    for segments in ([(0x10000, 16)], [(0x10001, 16)], [(0x10000, 3), (0x20005, 13)]):
        offset = 0
        for address, length in segments:
            memory.write_slice(GuestAddress(address), raw[offset:offset + length])
            offset += length
        read = read_struct(memory, segments, Header)
        assert (read.a, read.b) == (7, 2**63 + 5)


# ---- a driver in another process ----------------------------------------------------------

CHAINS = 3000
PAYLOAD = 0x20000


def _driver_process(memory: GuestMemoryMmap, results: multiprocessing.Queue[str]) -> None:
    layout = QueueLayout.contiguous(SIZE, GuestAddress(0x1000))
    driver = DriverQueue(memory, layout)
    flag = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(0x3F000))
    memory.write_atomic(flag, 1, Ordering.RELEASE)  # rings zeroed: the device may start
    done = 0
    published = 0
    while done < CHAINS:
        while published < CHAINS and driver.free_count() >= 2:
            slot = PAYLOAD + (published % SIZE) * 64
            body = published.to_bytes(4, "little") * 7
            memory.write_slice(GuestAddress(slot), body + zlib.crc32(body).to_bytes(4,
                                                                                  "little"))
            driver.add([(slot, 32)], [(slot + 32, 4)])
            published += 1
        for head, length in driver.used():
            assert length == 4, (head, length)
            done += 1
    results.put(f"done {done}")


def test_device_and_driver_in_two_processes_agree_on_every_chain() -> None:
    """A driver in another process publishes chains while this device pops them: every
    payload arrives whole (the ACQUIRE/RELEASE pairs on the indices order the entries)."""
    memory = make_memory()
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[str] = context.Queue()
    child = context.Process(target=_driver_process, args=(memory, results))
    child.start()
    flag = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(0x3F000))
    while memory.read_atomic(flag, Ordering.ACQUIRE) == 0:
        pass
    queue = SplitQueue(memory, QueueLayout.contiguous(SIZE, GuestAddress(0x1000)))
    seen = 0
    while seen < CHAINS:
        chain = queue.pop()
        if chain is None:
            continue
        (address, length), = chain.readable
        body = memory.read_bytes(GuestAddress(address), length)
        assert zlib.crc32(body[:28]) == int.from_bytes(body[28:], "little")
        assert int.from_bytes(body[:4], "little") == seen
        queue.add_used(chain.head, 4)
        seen += 1
    child.join(120)
    assert child.exitcode == 0
    assert results.get(timeout=10) == f"done {CHAINS}"


@pytest.mark.parametrize("where", ["end of the largest region", "end of a small region"])
def test_an_empty_buffer_just_past_a_region_is_refused_alike(where: str) -> None:
    """The inline check for the largest region answers as the general one: an address
    at a region's end is outside it, whatever the length."""
    memory = make_memory()
    driver, queue = make_pair(memory)
    address = MEMORY_SIZE if where == "end of the largest region" else SECOND + 0x10000
    driver.add([(address, 0)], [])
    with pytest.raises(InvalidChain, match="not in guest memory"):
        queue.pop()
