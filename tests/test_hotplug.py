"""Hot-plug: immutable snapshots, `GuestMemoryAtomic`, and explicit close of regions.

The stress test runs in a subprocess (this file run as a script; a use-after-unmap
would kill the interpreter): reader threads take snapshots and read through them while
a writer thread removes and re-inserts regions. Every region is filled with its own
signature, so a reader knows what it must read. The checks:

- a snapshot taken after a removal never contains the removed region, and the writer
  sees the removed range as `InvalidGuestAddress` right after removing it;
- every read through a snapshot returns the signature of the region that snapshot
  holds, and old snapshots (kept by the readers) stay readable with their data;
- `close()` of a removed region is refused with `RegionInUse` while a snapshot or a
  view holds it, and succeeds once they are gone.

A control run with a holder that publishes removals late (as a mutable, in-place
memory map effectively would) must be caught by the same checks.
"""

from __future__ import annotations

import ctypes
import gc
import json
import mmap
import random
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Final

import pytest
from host_assumptions import needs_8_byte_atomics
from support import run_python

from vm_memory import (
    AlignedGuestAddress,
    GuestAddress,
    GuestMemory,
    GuestMemoryAtomic,
    GuestMemoryError,
    GuestMemoryMmap,
    GuestRegionMmap,
    InvalidGuestAddress,
    InvalidRange,
    MmapRegion,
    RegionInUse,
    RegionOverlap,
    VolatileSlice,
)

PAGE: Final = mmap.PAGESIZE
SLOT_SIZE: Final = 2 * PAGE
SLOTS: Final = tuple(0x10_0000 * (index + 1) for index in range(4))
BASE_START: Final = 0
STRESS_SECONDS: Final = 3.0
STRESS_MAX_SECONDS: Final = 120.0
"""How long a stress run may go on past `STRESS_SECONDS` for its minimums (a loaded
machine gives its threads little time)."""
STRESS_MINIMUMS: Final = {"reads": 1001, "misses": 101, "removals": 51, "inserts": 51,
                          "old_snapshot_reads": 21, "close_refused": 1}
"""What a stress run must have done to prove anything."""
READERS: Final = 2


def u64(address: int) -> AlignedGuestAddress[ctypes.c_uint64]:
    return AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(address))


def slot_region(start: int, generation: int) -> tuple[GuestRegionMmap, bytes]:
    """A fresh region at `start`, filled with the 8-byte signature (slot, generation)."""
    signature = ((start << 24) | generation).to_bytes(8, "little")
    mapping = MmapRegion.anonymous(SLOT_SIZE)
    mapping.mapping[:] = signature * (SLOT_SIZE // 8)
    return GuestRegionMmap(mapping, GuestAddress(start)), signature


# ---- The stress worker ---------------------------------------------------------------


class LateHolder(GuestMemoryAtomic[GuestMemoryMmap]):
    """A broken holder for the control run: a removal is published only at the next
    insert, so snapshots taken after `remove_region` returned still hold the region."""

    pending: GuestMemoryMmap | None = None

    def remove_region(self, address: GuestAddress, length: int) -> Any:
        smaller, region = self.memory().remove_region(address, length)
        self.pending = smaller
        return region

    def insert_region(self, region: Any) -> GuestMemoryMmap:
        pending = self.pending
        if pending is not None:
            self.update(lambda _: pending)
            self.pending = None
        return super().insert_region(region)


class StressRun:
    """Readers read through snapshots while a writer removes and inserts regions."""

    def __init__(self, late: bool) -> None:
        base = GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(BASE_START))
        self.signatures: dict[int, bytes] = {}
        """Signature by id() of region; `everything` keeps every region alive."""
        self.everything: list[GuestRegionMmap] = [base]
        initial = [self.new_region(start, 0) for start in SLOTS]
        self.holder: GuestMemoryAtomic[GuestMemoryMmap] = (
            LateHolder if late else GuestMemoryAtomic)(GuestMemoryMmap([base, *initial]))
        self.removed: list[GuestRegionMmap] = []
        self.violations: list[str] = []
        self.counts = {"reads": 0, "misses": 0, "old_snapshot_reads": 0, "removals": 0,
                       "inserts": 0, "close_refused": 0, "close_done": 0,
                       "removed_gone_after": 0}
        self.stop = threading.Event()
        self.readers = [threading.Thread(target=self.reader, args=(seed,))
                        for seed in range(READERS)]

    def new_region(self, start: int, generation: int) -> GuestRegionMmap:
        region, signature = slot_region(start, generation)
        self.signatures[id(region)] = signature
        self.everything.append(region)
        return region

    def violation(self, text: str) -> None:
        if len(self.violations) < 20:
            self.violations.append(text)

    def check_snapshot(self, snapshot: GuestMemory, rng: random.Random) -> None:
        """Every slot region of an old snapshot still reads its own signature."""
        for region in snapshot.regions()[1:]:
            offset = rng.randrange(0, SLOT_SIZE, 8)
            data = snapshot.read_bytes(GuestAddress(region.start_value + offset), 8)
            if data != self.signatures[id(region)]:
                self.violation(f"read {data.hex()} from {region!r}")

    def read_once(self, snapshot: GuestMemoryMmap, rng: random.Random) -> VolatileSlice | None:
        """One atomic read at a random slot; returns a view of it if it was backed."""
        start = rng.choice(SLOTS)
        address = GuestAddress(start + rng.randrange(0, SLOT_SIZE, 8))
        region = snapshot.find_region(address)
        try:
            value = snapshot.read_atomic(u64(address.raw_value()))
        except InvalidGuestAddress:
            if region is not None:
                self.violation(f"InvalidGuestAddress at {address} inside {region!r}")
            self.counts["misses"] += 1
            return None
        if region is None or value.to_bytes(8, sys.byteorder) != self.signatures[id(region)]:
            self.violation(f"read {value:#x} at {address}, region {region!r}")
        self.counts["reads"] += 1
        return snapshot.get_slice(GuestAddress(start), 8)

    def reader(self, seed: int) -> None:
        rng = random.Random(seed)
        kept: deque[GuestMemory | VolatileSlice] = deque(maxlen=16)
        while not self.stop.is_set():
            removed_before = {id(region) for region in self.removed[:len(self.removed)]}
            snapshot = self.holder.memory()
            for region in snapshot.regions():
                if id(region) in removed_before:
                    self.violation(f"snapshot taken after removal holds {region!r}")
            view = self.read_once(snapshot, rng)
            if rng.random() < 0.05:  # keep a snapshot, or only a view of one, for a while
                kept.append(snapshot if view is None or rng.random() < 0.5 else view)
            if kept and rng.random() < 0.05:
                old_view = rng.choice(kept)
                old = old_view.memory if isinstance(old_view, VolatileSlice) else old_view
                assert isinstance(old, GuestMemory)  # the view kept its memory alive
                self.check_snapshot(old, rng)
                if isinstance(old_view, VolatileSlice) and \
                        old_view.to_bytes() != self.signatures[id(old_view.region)]:
                    self.violation(f"old view {old_view!r} read {old_view.to_bytes().hex()}")
                self.counts["old_snapshot_reads"] += 1

    def remove(self, start: int) -> GuestRegionMmap:
        gone = self.holder.remove_region(GuestAddress(start), SLOT_SIZE)
        assert isinstance(gone, GuestRegionMmap)
        try:
            self.holder.memory().read(GuestAddress(start), bytearray(8))
            self.violation(f"removed {gone!r} still readable in the next snapshot")
        except InvalidGuestAddress:
            self.counts["removed_gone_after"] += 1
        self.removed.append(gone)
        self.counts["removals"] += 1
        return gone

    def try_close(self, pending: list[GuestRegionMmap]) -> None:
        for candidate in list(pending):
            try:
                candidate.close()
            except RegionInUse:
                self.counts["close_refused"] += 1
            else:
                pending.remove(candidate)
                self.counts["close_done"] += 1

    def writer(self) -> None:
        rng = random.Random(1)
        generation = 0
        pending: list[GuestRegionMmap] = []
        while not self.stop.is_set():
            start = rng.choice(SLOTS)
            if self.holder.memory().find_region(GuestAddress(start)) is not None:
                pending.append(self.remove(start))
            else:
                generation += 1
                self.holder.insert_region(self.new_region(start, generation))
                self.counts["inserts"] += 1
            self.try_close(pending)
            time.sleep(0.0005)
        for thread in self.readers:  # readers gone: every removed region must close now
            thread.join()
        gc.collect()
        refused = self.counts["close_refused"]
        self.try_close(pending)
        if self.counts["close_refused"] != refused:
            self.violation(f"close still refused after every reader left: {pending}")

    def enough(self) -> bool:
        """Has the run seen all it must? The normal run: every count at its minimum; the
        late holder's: the violation it exists to show."""
        if isinstance(self.holder, LateHolder):
            return any("still readable in the next snapshot" in text
                       for text in self.violations)
        return all(self.counts[name] >= minimum for name, minimum in STRESS_MINIMUMS.items())

    def run(self, seconds: float) -> dict[str, Any]:
        """Run for ``seconds``, and on until `enough` (at most `STRESS_MAX_SECONDS`)."""
        # Switch threads often: more interleavings of readers and the writer, and the
        # writer is not starved of the GIL by the busy readers.
        sys.setswitchinterval(1e-4)
        writing = threading.Thread(target=self.writer)
        started = time.monotonic()
        for thread in [*self.readers, writing]:
            thread.start()
        time.sleep(seconds)
        while not self.enough() and time.monotonic() - started < STRESS_MAX_SECONDS:
            time.sleep(0.1)
        self.stop.set()
        writing.join()
        counts = dict(self.counts)
        counts["closed_mappings"] = sum(region.mapping.closed for region in self.removed)
        return {"counts": counts, "violations": self.violations,
                "removed": len(self.removed)}


def run_stress(seconds: float, *, late: bool) -> dict[str, Any]:
    result = run_python(str(Path(__file__).resolve()), str(seconds), str(int(late)))
    assert result.returncode == 0, f"the stress process died: {result.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@needs_8_byte_atomics
def test_hot_plug_stress_in_a_subprocess() -> None:
    """No crash; no removed region in a later snapshot; old snapshots keep their data;
    close is refused while used and works once every user is gone."""
    report = run_stress(STRESS_SECONDS, late=False)
    counts = report["counts"]
    assert report["violations"] == []
    short = {name: counts[name] for name, minimum in STRESS_MINIMUMS.items()
             if counts[name] < minimum}
    assert not short, f"the run did too little to prove anything: {short} ({counts})"
    assert counts["removed_gone_after"] == counts["removals"]
    assert counts["close_done"] == report["removed"] == counts["closed_mappings"]


def test_hot_plug_checks_catch_a_late_publishing_holder() -> None:
    """The same harness, on a holder that publishes removals late, reports violations."""
    report = run_stress(0.0, late=True)
    assert any("still readable in the next snapshot" in text
               for text in report["violations"]), report


# ---- Deterministic hot-plug behaviour --------------------------------------------------


def _memory() -> tuple[GuestMemoryMmap, GuestRegionMmap]:
    base = GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(0))
    region, _ = slot_region(SLOTS[0], 7)
    return GuestMemoryMmap([base, region]), region


def test_insert_and_remove_return_new_objects() -> None:
    memory, region = _memory()
    smaller, taken = memory.remove_region(GuestAddress(SLOTS[0]), SLOT_SIZE)
    assert taken is region and smaller is not memory
    assert memory.num_regions() == 2 and smaller.num_regions() == 1
    assert memory.read_bytes(GuestAddress(SLOTS[0]), 8) == slot_region(SLOTS[0], 7)[1]
    with pytest.raises(InvalidGuestAddress):
        smaller.read(GuestAddress(SLOTS[0]), bytearray(8))
    with pytest.raises(InvalidGuestAddress):
        smaller.read_atomic(u64(SLOTS[0]))
    bigger = smaller.insert_region(region)
    assert isinstance(bigger, GuestMemoryMmap) and bigger.num_regions() == 2
    assert smaller.num_regions() == 1
    with pytest.raises(RegionOverlap):
        bigger.insert_region(slot_region(SLOTS[0] + PAGE, 1)[0])
    with pytest.raises(InvalidRange):
        bigger.remove_region(GuestAddress(SLOTS[0]), PAGE)  # not the region's exact range


def test_holder_publishes_each_change() -> None:
    memory, _ = _memory()
    holder = GuestMemoryAtomic(memory)
    first = holder.memory()
    added, _ = slot_region(SLOTS[1], 1)
    second = holder.insert_region(added)
    assert holder.memory() is second and first.num_regions() == 2
    assert second.num_regions() == 3
    assert holder.remove_region(GuestAddress(SLOTS[1]), SLOT_SIZE) is added
    assert holder.memory().num_regions() == 2
    assert first.find_region(GuestAddress(SLOTS[1])) is None
    assert second.find_region(GuestAddress(SLOTS[1])) is added


def make_user(kind: str, snapshot: GuestMemoryMmap) -> object:
    """The snapshot itself, or only a view made from it."""
    if kind == "snapshot":
        return snapshot
    view = snapshot.get_slice(GuestAddress(SLOTS[0]), 64)
    if kind == "slice":
        return view.subslice(8, 16)
    if kind == "ref":
        return view.get_ref(ctypes.c_uint64, 0)
    return view.get_array_ref(ctypes.c_uint32, 0, 16)


@pytest.mark.parametrize("holder_kind", ["snapshot", "slice", "ref", "array_ref"])
def test_close_refused_while_used_then_works(holder_kind: str) -> None:
    """A removed region cannot be closed while a snapshot or a view of one holds it."""
    memory, region = _memory()
    holder = GuestMemoryAtomic(memory)
    del memory
    user = make_user(holder_kind, holder.memory())
    holder.remove_region(GuestAddress(SLOTS[0]), SLOT_SIZE)
    with pytest.raises(RegionInUse) as raised:
        region.close()
    assert raised.value.start == SLOTS[0] and raised.value.users >= 1
    assert not region.mapping.closed
    del user
    gc.collect()
    region.close()
    assert region.mapping.closed and region.mapping.mapping.closed
    assert holder.memory().read_bytes(GuestAddress(0), 4) == bytes(4)


def test_close_refused_while_region_is_in_the_current_snapshot() -> None:
    memory, region = _memory()
    holder = GuestMemoryAtomic(memory)
    del memory
    with pytest.raises(RegionInUse):
        region.close()
    assert holder.memory().read_bytes(GuestAddress(SLOTS[0]), 8) == slot_region(SLOTS[0], 7)[1]


def test_close_refused_while_a_zero_copy_buffer_is_exported() -> None:
    """A memoryview from `as_memoryview` is a view too: close must refuse it, intact."""
    memory, region = _memory()
    exported = memory.get_slice(GuestAddress(SLOTS[0]), 16).as_memoryview()
    del memory
    gc.collect()
    with pytest.raises(RegionInUse):
        region.close()
    assert not region.mapping.closed
    assert GuestMemoryMmap([region]).read_bytes(GuestAddress(SLOTS[0]), 8) == \
        bytes(exported[:8])


def test_closed_region_cannot_be_used_again() -> None:
    memory, region = _memory()
    del memory
    gc.collect()
    region.close()
    try:
        GuestMemoryMmap([region]).read_bytes(GuestAddress(SLOTS[0]), 8)
    except GuestMemoryError:  # refused with a typed error, at construction or access
        return
    pytest.fail("a closed region was accepted and read")


if __name__ == "__main__":
    print(json.dumps(StressRun(late=bool(int(sys.argv[2]))).run(float(sys.argv[1]))))
