"""Shared machinery of the real-concurrency tests: processes sharing memfd guest memory.

The test process builds guest memory with `GuestMemoryMmap.from_ranges_memfd` (two
adjacent one-page regions, each its own memfd) and starts worker processes with
`subprocess`, handing them the memfd descriptors. A worker rebuilds the same guest
memory from those descriptors (`MmapRegion.from_file` + `GuestRegionMmap` +
`GuestMemoryMmap.from_regions`), as a device back-end receiving a VMM's memory would,
waits at a start gate in the shared memory, does its part and prints one JSON line.

Each role has an atomic variant and a non-atomic control variant run by the same code,
so every test that proves a guarantee also shows that its check can fail.

Run as a script, this file is the worker (`python concurrency_harness.py <json>`).
"""

from __future__ import annotations

import json
import operator
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from ctypes import c_uint8, c_uint32, c_uint64
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from support import python_environment

from vm_memory import (
    AlignedGuestAddress,
    GuestAddress,
    GuestMemoryMmap,
    GuestRegionMmap,
    MmapRegion,
    Ordering,
)

PAGE: Final = 4096
REGION_STARTS: Final = (0, PAGE)
"""Two adjacent regions, so a value can be placed across the boundary between them."""

ONES: Final = (1 << 64) - 1
"""The second torn-read pattern (the first is 0)."""

# The shared layout (guest addresses), all in the first region unless said otherwise.
READY: Final = 0x00
"""u32: workers that have reached the start gate."""
GO: Final = 0x04
"""u32: set to 1 by the test process to open the gate."""
STOP: Final = 0x08
"""u32: set to 1 by the test process to end open-ended workers (the writer)."""
STORES: Final = 0x10
"""u64: stores done so far by the torn-read writer."""
ALIGNED_VALUE: Final = 0x100
"""u64: the torn-read target of the atomic and byte-wise runs."""
STRADDLING_VALUE: Final = PAGE - 4
"""8 bytes, half at the end of the first region and half at the start of the second."""
COUNTER64: Final = 0x200
COUNTER32: Final = 0x208
DOWN_COUNTER: Final = 0x210
"""u64: starts at the number of decrements; fetch_sub brings it to 0."""
OR_AND_MASK: Final = 0x218
"""u64: each thread sets and clears its own bit with fetch_or / fetch_and."""
XOR_MASK: Final = 0x220
"""u64: each thread toggles its own bit with fetch_xor."""
SWAP_WORD: Final = 0x228
"""u64: threads swap unique tokens in and out."""
LOCK: Final = 0x300
"""u32: the spin lock word (0 free, 1 held)."""
GUARDED_WORDS: Final = 0x340
"""4 u64 words updated together, non-atomically, under the lock."""
GUARDED_COUNT: Final = 4

BATCH: Final = 256
"""Writer stores between two looks at the stop flag (keeps the store loop tight)."""
TIMEOUT: Final = 300.0
"""Seconds after which a stuck worker is a failure, not a hang."""


def u32(address: int) -> AlignedGuestAddress[c_uint32]:
    return AlignedGuestAddress.new(c_uint32, GuestAddress(address))


def u64(address: int) -> AlignedGuestAddress[c_uint64]:
    return AlignedGuestAddress.new(c_uint64, GuestAddress(address))


def shared_memory() -> GuestMemoryMmap:
    """Fresh guest memory, zero-filled, each region in its own sealed memfd."""
    return GuestMemoryMmap.from_ranges_memfd((GuestAddress(start), PAGE)
                                             for start in REGION_STARTS)


def region_specs(memory: GuestMemoryMmap) -> list[tuple[int, int, int]]:
    """(fd, guest start, size) of each region: what a worker needs to map the memory."""
    specs: list[tuple[int, int, int]] = []
    for region in memory.regions():
        fd = region.mapping.fd
        assert fd is not None, "shared memory is memfd-backed"
        specs.append((fd, region.start_value, region.length))
    return specs


def attach(specs: list[tuple[int, int, int]]) -> GuestMemoryMmap:
    """Map the memory another process shared with us, from its memfd descriptors."""
    return GuestMemoryMmap.from_regions(
        GuestRegionMmap(MmapRegion.from_file(fd, size), GuestAddress(start))
        for fd, start, size in specs)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.001)


# ---- The test-process side ------------------------------------------------------------


class WorkerGroup:
    """Worker processes attached to `memory`, held at the start gate until `open_gate`.

    Use as a context manager: on any failure the workers still running are killed.
    """

    def __init__(self, memory: GuestMemoryMmap, role: str, count: int,
                 **params: Any) -> None:
        self.memory = memory
        self.count = count
        specs = region_specs(memory)
        self.processes = [
            subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), json.dumps(
                    {"regions": specs, "role": role, "worker": index, "params": params})],
                pass_fds=[fd for fd, _, _ in specs], env=python_environment(),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for index in range(count)
        ]

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    def open_gate(self) -> None:
        """Wait until every worker is mapped and waiting, then let them all go at once."""
        memory, ready = self.memory, u32(READY)

        def all_ready() -> bool:
            for process in self.processes:
                if process.poll() is not None:
                    _, error = process.communicate()
                    raise AssertionError(f"worker exited early ({process.returncode}):\n"
                                         f"{error}")
            return memory.read_atomic(ready) == self.count

        wait_until(all_ready, "the workers to reach the start gate")
        memory.write_atomic(u32(GO), 1, Ordering.RELEASE)

    def results(self) -> list[dict[str, Any]]:
        """Each worker's JSON report, after it exited normally."""
        reports: list[dict[str, Any]] = []
        for process in self.processes:
            output, error = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, (
                f"worker failed with {process.returncode}:\n{output}\n{error}")
            reports.append(json.loads(output.strip().splitlines()[-1]))
        return reports


@dataclass(frozen=True)
class TornReadResult:
    """What a reader saw of a value flipped between 0 and all-ones by another process."""

    mode: str
    reads: int
    zeros: int
    ones: int
    flips: int
    """How often two consecutive reads saw different values: the reads overlapped stores."""
    torn: int
    torn_examples: tuple[int, ...]
    writer_stores: int
    """Stores the writer made while the reader was reading."""
    seconds: float


TORN_READ_MODES: Final = {
    # mode: (writer mode, what the reader does)
    "atomic": ("atomic", "read_atomic of an aligned u64"),
    "bytewise": ("atomic", "8 separate read_obj of its bytes (writer: write_atomic)"),
    "straddle": ("straddle", "read_obj_unaligned of a u64 across two regions "
                             "(writer: write_obj_unaligned)"),
}


def _reader(memory: GuestMemoryMmap, mode: str) -> Callable[[], int]:
    if mode == "atomic":
        read_atomic, target = memory.read_atomic, u64(ALIGNED_VALUE)
        return lambda: read_atomic(target)
    if mode == "bytewise":
        read_obj = memory.read_obj
        parts = [(AlignedGuestAddress.new(c_uint8, GuestAddress(ALIGNED_VALUE + index)), 8 * index)
                 for index in range(8)]
        return lambda: sum(read_obj(part) << shift for part, shift in parts)
    if mode == "straddle":
        read_unaligned, where = memory.read_obj_unaligned, GuestAddress(STRADDLING_VALUE)
        return lambda: read_unaligned(where, c_uint64)
    raise ValueError(mode)


def _split_cpus() -> tuple[list[int], list[int]]:
    """Disjoint CPU sets for the reader and the writer, so that they run side by side
    whenever both are scheduled: sharing one core, they would only alternate in time
    slices and the reader would see each value for milliseconds at a time."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return cpus, cpus
    half = len(cpus) // 2
    return cpus[:half], cpus[half:]


@contextmanager
def _cpu_affinity(cpus: list[int]) -> Generator[None, None, None]:
    """Run this process on `cpus` for a while (the test process: restored after)."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def run_torn_reads(mode: str, reads: int, *, min_flips: int = 0, min_torn: int = 0,
                   max_seconds: float = 120.0, chunk: int = 20_000) -> TornReadResult:
    """Read the shared value while a writer process flips it; count the torn values.

    Reads at least `reads` times, and goes on until the values seen have changed at
    least `min_flips` times and `min_torn` torn values were seen, or `max_seconds` have
    passed: on a loaded machine the two processes may share one core for a while, and
    a run that never overlapped the writer would prove nothing.
    """
    writer_mode = TORN_READ_MODES[mode][0]
    memory = shared_memory()
    read = _reader(memory, mode)
    stores = u64(STORES)
    zeros = ones = flips = torn = 0
    examples: list[int] = []
    previous: int | None = None
    reader_cpus, writer_cpus = _split_cpus()
    with _cpu_affinity(reader_cpus), \
            WorkerGroup(memory, "writer", 1, mode=writer_mode, cpus=writer_cpus) as writer:
        writer.open_gate()
        wait_until(lambda: memory.read_atomic(stores) > 0, "the writer's first stores")
        stores_before = memory.read_atomic(stores)
        started = time.perf_counter()
        done = 0
        while done < reads or ((flips < min_flips or torn < min_torn)
                               and time.perf_counter() - started < max_seconds):
            count = chunk
            values = [read() for _ in range(count)]
            done += count
            chunk_zeros, chunk_ones = values.count(0), values.count(ONES)
            zeros += chunk_zeros
            ones += chunk_ones
            if chunk_zeros + chunk_ones != count:
                bad = [value for value in values if value not in (0, ONES)]
                torn += len(bad)
                examples.extend(bad[:max(0, 8 - len(examples))])
            flips += sum(map(operator.ne, values, values[1:]))
            if previous is not None and previous != values[0]:
                flips += 1
            previous = values[-1]
        seconds = time.perf_counter() - started
        stores_during = memory.read_atomic(stores) - stores_before
        memory.write_atomic(u32(STOP), 1)
        (report,) = writer.results()
    assert report["stores"] >= stores_during
    return TornReadResult(mode, done, zeros, ones, flips, torn, tuple(examples),
                          stores_during, seconds)


# ---- The worker side ------------------------------------------------------------------


def _start_gate(memory: GuestMemoryMmap) -> None:
    """Report ready, then wait for the test process to open the gate."""
    memory.fetch_add(u32(READY), 1)
    go = u32(GO)
    wait_until(lambda: memory.read_atomic(go, Ordering.ACQUIRE) == 1, "the start gate")


def _run_threads(count: int, body: Callable[[int], dict[str, Any]]) -> list[dict[str, Any]]:
    """Run `body(thread index)` on `count` threads released together; their reports."""
    barrier = threading.Barrier(count)
    reports: list[dict[str, Any]] = [{} for _ in range(count)]
    failures: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            reports[index] = body(index)
        except BaseException as error:
            failures.append(error)
            raise

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return reports


def _writer(memory: GuestMemoryMmap, worker: int, mode: str,
            cpus: list[int]) -> dict[str, Any]:
    """Flip the torn-read target between 0 and all-ones until told to stop."""
    os.sched_setaffinity(0, cpus)
    stop, stores = u32(STOP), u64(STORES)
    read_atomic, fetch_add = memory.read_atomic, memory.fetch_add
    if mode == "atomic":
        write_atomic, target = memory.write_atomic, u64(ALIGNED_VALUE)

        def batch() -> None:
            for _ in range(BATCH // 2):
                write_atomic(target, 0)
                write_atomic(target, ONES)
    elif mode == "straddle":
        write_unaligned, where = memory.write_obj_unaligned, GuestAddress(STRADDLING_VALUE)

        def batch() -> None:
            for _ in range(BATCH // 2):
                write_unaligned(where, c_uint64, 0)
                write_unaligned(where, c_uint64, ONES)
    else:
        raise ValueError(mode)
    _start_gate(memory)
    total = 0
    parent, deadline = os.getppid(), time.monotonic() + TIMEOUT
    while not read_atomic(stop):
        if os.getppid() != parent or time.monotonic() > deadline:
            raise TimeoutError("the test process went away without stopping the writer")
        batch()
        total += BATCH
        fetch_add(stores, BATCH)
    return {"worker": worker, "stores": total}


def _counter(memory: GuestMemoryMmap, worker: int, threads: int, iterations: int,
             mode: str) -> dict[str, Any]:
    """Increment the u64 and u32 counters `iterations` times on each of `threads` threads.

    mode "atomic" uses fetch_add; mode "plain" is the non-atomic control: read_obj,
    then write_obj of the value plus one.
    """
    counter64, counter32 = u64(COUNTER64), u32(COUNTER32)
    fetch_add, read_obj, write_obj = memory.fetch_add, memory.read_obj, memory.write_obj

    def atomic(_: int) -> dict[str, Any]:
        for _ in range(iterations):
            fetch_add(counter64, 1)
            fetch_add(counter32, 1)
        return {}

    def plain(_: int) -> dict[str, Any]:
        for _ in range(iterations):
            write_obj(counter64, read_obj(counter64) + 1)
            write_obj(counter32, read_obj(counter32) + 1)
        return {}

    body = {"atomic": atomic, "plain": plain}[mode]
    _start_gate(memory)
    _run_threads(threads, body)
    return {"worker": worker}


ReadModifyWrite = Callable[[AlignedGuestAddress[c_uint64], int], int]
"""(address, operand) -> old value."""


def _plain_read_modify_write(memory: GuestMemoryMmap,
                             combine: Callable[[int, int], int]) -> ReadModifyWrite:
    """The non-atomic control of a read-modify-write: read_obj, then write_obj."""
    read_obj, write_obj = memory.read_obj, memory.write_obj

    def operation(address: AlignedGuestAddress[c_uint64], operand: int) -> int:
        old = read_obj(address)
        write_obj(address, combine(old, operand))
        return old

    return operation


def _wrapping_sub(old: int, operand: int) -> int:
    return (old - operand) & ONES


def _replace(_: int, new: int) -> int:
    return new


def _read_modify_writes(memory: GuestMemoryMmap, worker: int, threads: int,
                        iterations: int, mode: str) -> dict[str, Any]:
    """fetch_sub, fetch_or, fetch_and, fetch_xor and swap, each checked as it goes.

    Thread `g` (global index) owns bit `g` of the two masks; nobody else changes that
    bit, so the old values returned must show exactly the bit's own history. Swap
    tokens are unique; the values swapped out are reported so the test process can
    check that every token was seen exactly once. Mode "plain" is the non-atomic
    control: each operation done as read_obj then write_obj (wrapping like fetch_sub;
    write_obj may even expose a transient 0, as struct clears before it packs).
    """
    down, or_and, xor = u64(DOWN_COUNTER), u64(OR_AND_MASK), u64(XOR_MASK)
    swap_word = u64(SWAP_WORD)
    operations: tuple[ReadModifyWrite, ...]
    if mode == "atomic":
        operations = (memory.fetch_sub, memory.fetch_or, memory.fetch_and,
                      memory.fetch_xor, memory.swap)
    elif mode == "plain":
        operations = tuple(_plain_read_modify_write(memory, combine) for combine in (
            _wrapping_sub, int.__or__, int.__and__, int.__xor__, _replace))
    else:
        raise ValueError(mode)
    fetch_sub, fetch_or, fetch_and, fetch_xor, swap = operations

    def body(thread: int) -> dict[str, Any]:
        index = worker * threads + thread
        bit = 1 << index
        wrong_or = wrong_and = wrong_xor = 0
        swapped_out: list[int] = []
        for step in range(iterations):
            fetch_sub(down, 1)
            if fetch_or(or_and, bit) & bit:
                wrong_or += 1
            if not fetch_and(or_and, ONES ^ bit) & bit:
                wrong_and += 1
            if bool(fetch_xor(xor, bit) & bit) != bool(step % 2):
                wrong_xor += 1
            swapped_out.append(swap(swap_word, index * iterations + step + 1))
        fetch_or(or_and, bit)
        return {"wrong_or": wrong_or, "wrong_and": wrong_and, "wrong_xor": wrong_xor,
                "swapped_out": swapped_out}

    _start_gate(memory)
    reports = _run_threads(threads, body)
    return {"worker": worker, "threads": reports}


def _guarded_update(memory: GuestMemoryMmap, worker: int, threads: int, iterations: int,
                    locked: bool) -> dict[str, Any]:
    """Increment 4 words together with plain read_obj/write_obj, under a spin lock or not.

    The lock is a compare_exchange of 0 → 1 with ACQUIRE on success, released by a
    RELEASE store of 0. Under the lock the 4 words must always be equal.
    """
    lock = u32(LOCK)
    words = [u64(GUARDED_WORDS + 8 * index) for index in range(GUARDED_COUNT)]
    compare_exchange, read_atomic, write_atomic = (memory.compare_exchange,
                                                   memory.read_atomic, memory.write_atomic)
    read_obj, write_obj = memory.read_obj, memory.write_obj

    def body(_: int) -> dict[str, Any]:
        inconsistent = contended = 0
        for _ in range(iterations):
            if locked:
                while not compare_exchange(lock, 0, 1, Ordering.ACQUIRE,
                                           Ordering.RELAXED)[0]:
                    contended += 1
                    while read_atomic(lock, Ordering.RELAXED):
                        os.sched_yield()
            values = [read_obj(word) for word in words]
            if values.count(values[0]) != GUARDED_COUNT:
                inconsistent += 1
            for word in words:
                write_obj(word, values[0] + 1)
            if locked:
                write_atomic(lock, 0, Ordering.RELEASE)
        return {"inconsistent": inconsistent, "contended": contended}

    _start_gate(memory)
    reports = _run_threads(threads, body)
    return {"worker": worker,
            "inconsistent": sum(report["inconsistent"] for report in reports),
            "contended": sum(report["contended"] for report in reports)}


ROLES: Final[dict[str, Callable[..., dict[str, Any]]]] = {
    "writer": _writer,
    "counter": _counter,
    "read_modify_writes": _read_modify_writes,
    "guarded_update": _guarded_update,
}


def worker_main(argument: str) -> None:
    """The worker process: attach to the shared memory, play the role, print the report."""
    request = json.loads(argument)
    specs = [(int(fd), int(start), int(size)) for fd, start, size in request["regions"]]
    memory = attach(specs)
    report = ROLES[request["role"]](memory, request["worker"], **request["params"])
    print(json.dumps(report), flush=True)


def reports_of_threads(reports: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The per-thread reports of all workers, for roles that report per thread."""
    for report in reports:
        yield from report["threads"]


if __name__ == "__main__":
    worker_main(sys.argv[1])
