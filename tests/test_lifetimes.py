"""Lifetimes under attack: explicit closes, hot-plug moves, exported buffers, drops and
garbage collection while other threads use the memory, its views and its refs.

An unmap under a live user is not an exception, it is a SIGSEGV of the whole
interpreter (the atomic paths use raw host pointers), so every scenario that could crash
runs in a child process and the test first checks that the child exited normally. Each
scenario also has a control that shows what the child reports when the unmap does
happen (so a child that silently did nothing would fail the test).
"""

from __future__ import annotations

import json
import textwrap
from typing import Any, Final

import pytest
from host_assumptions import WIDE_ATOMIC_PRELUDE, needs_8_byte_atomics
from support import run_python

CHILD_TIMEOUT: Final = 300

PRELUDE: Final = textwrap.dedent('''
    import ctypes, gc, json, sys, threading
    from vm_memory import *
    PAGE = 4096
    results = {}

    def u64(address):
        return AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(address))

    def outcome(call):
        try:
            return {"value": call()}
        except Exception as error:
            return {"raised": type(error).__name__, "message": str(error)}
''') + WIDE_ATOMIC_PRELUDE
"""The children's common start: `u64(address)` where 8 bytes matter, `wide(address)`
(the widest atomic this host does) where the width is incidental, and `outcome(call)`."""


def run_child(body: str) -> dict[str, Any]:
    """Run `body` after the prelude in a fresh interpreter; it must exit normally (not
    by a signal) and print its `results` as JSON."""
    code = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(results))\n"
    child = run_python("-c", code, timeout=CHILD_TIMEOUT)
    assert child.returncode == 0, (
        f"the child died (status {child.returncode}; -11 is SIGSEGV):\n{child.stderr}")
    results: dict[str, Any] = json.loads(child.stdout.splitlines()[-1])
    return results


def test_mapping_close_is_refused_while_a_memory_uses_it() -> None:
    """`MmapRegion.close()` under a live memory: refused, and the memory keeps working
    (the atomic path's raw pointer must still point at mapped memory)."""
    results = run_child('''
        mapping = MmapRegion.anonymous(PAGE)
        memory = GuestMemoryMmap.from_regions([GuestRegionMmap(mapping, GuestAddress(0))])
        memory.write_atomic(wide(8), 7)
        results["close"] = outcome(mapping.close)
        results["after"] = outcome(lambda: memory.read_atomic(wide(8)))
        results["closed"] = mapping.closed
        del memory
        gc.collect()
        results["close_when_unused"] = outcome(mapping.close)
        results["closed_after"] = mapping.closed
    ''')
    assert results["close"]["raised"] == "RegionInUse"
    assert results["after"] == {"value": 7}
    assert results["closed"] is False
    assert results["close_when_unused"] == {"value": None}
    assert results["closed_after"] is True


def test_close_with_typed_views_is_refused_cleanly() -> None:
    """Typed views exist after warm typed accesses; a refused close leaves them (and the
    buffer) usable: no bare BufferError, no released buffer, no ValueError after."""
    results = run_child('''
        region = GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(0))
        memory = GuestMemoryMmap.from_regions([region])
        for _ in range(3):
            memory.write_obj(wide(16), 5)
            memory.read_obj(wide(16))
        region.typed_view(WIDE_CODE, WIDE_BYTES)  # the pure path made it warm; C needs none
        results["typed_views"] = sorted(region.typed_views)
        results["region_close"] = outcome(region.close)
        results["mapping_close"] = outcome(region.mapping.close)
        results["read_obj"] = outcome(lambda: memory.read_obj(wide(16)))
        results["write_slice"] = outcome(lambda: memory.write_slice(GuestAddress(0), b"ok"))
        results["read_atomic"] = outcome(lambda: memory.read_atomic(wide(16)))
    ''')
    assert results["typed_views"], "the warm accesses made a typed view"
    assert results["region_close"]["raised"] == "RegionInUse"
    assert results["mapping_close"]["raised"] == "RegionInUse"
    assert results["read_obj"] == {"value": 5}
    assert results["write_slice"] == {"value": None}
    assert results["read_atomic"] == {"value": 5}


def test_polling_device_thread_survives_refused_closes() -> None:
    """A device thread polls a VolatileRef while the main thread keeps trying to close
    the region and its mapping: every close is refused and the poller never faults."""
    results = run_child('''
        region = GuestRegionMmap(MmapRegion.memfd(PAGE), GuestAddress(0x1000))
        memory = GuestMemoryMmap.from_regions([region])
        ref = memory.get_slice(GuestAddress(0x1000), PAGE).get_ref(WIDE_TYPE, 64)
        del memory
        stop = threading.Event()
        polls = [0]
        def poll():
            while not stop.is_set():
                ref.read_atomic()
                ref.fetch_add(1)
                polls[0] += 1
        thread = threading.Thread(target=poll)
        thread.start()
        refused = 0
        for _ in range(300):
            for close in (region.close, region.mapping.close):
                try:
                    close()
                except RegionInUse:
                    refused += 1
        stop.set()
        thread.join()
        results["refused"] = refused
        results["polls_seen"] = ref.read_atomic() == polls[0]
        del ref
        gc.collect()
        results["close_at_last"] = outcome(region.close)
    ''')
    assert results["refused"] == 600
    assert results["polls_seen"] is True
    assert results["close_at_last"] == {"value": None}


@pytest.mark.parametrize("built_from", ["the mapping's view", "a placement's buffer"])
def test_a_region_built_by_hand_on_a_mapping_refuses_its_close(built_from: str) -> None:
    """A GuestMemoryRegion made from a mapping's buffer and host address (the extension
    point for new region kinds) is no placement of the mapping, yet a memory holding it
    uses the mapping's host memory: the close is refused, and everything keeps working."""
    results = run_child(f'''
        mapping = MmapRegion.anonymous(PAGE)
        placed = GuestRegionMmap(mapping, GuestAddress(0x10000))
        source = mapping.view if {built_from!r} == "the mapping's view" else placed.buffer
        region = GuestMemoryRegion(GuestAddress(0), PAGE, read_only=False, buffer=source,
                                   host_address=mapping.host_address)
        memory = GuestMemory([region])
        memory.write_obj(wide(8), 7)
        memory.write_slice(GuestAddress(0x20), b"warm")
        results["close"] = outcome(mapping.close)
        results["closed"] = mapping.closed
        results["read_obj"] = outcome(lambda: memory.read_obj(wide(8)))
        results["fetch_add"] = outcome(lambda: memory.fetch_add(wide(8), 1))
        results["write_slice"] = outcome(lambda: memory.write_slice(GuestAddress(0), b"x"))
        del memory, region, source  # the region's typed views are exports too
        gc.collect()
        results["close_when_unused"] = outcome(mapping.close)
    ''')
    assert results["close"]["raised"] == "RegionInUse"
    assert results["closed"] is False
    assert results["read_obj"] == {"value": 7}
    assert results["fetch_add"] == {"value": 7}
    assert results["write_slice"] == {"value": None}
    assert results["close_when_unused"] == {"value": None}


def test_hot_plug_move_counts_users_per_mapping() -> None:
    """Remove a region and place its mapping again elsewhere: closing the old placement
    (which no memory holds) must be refused while the new one is in use."""
    results = run_child('''
        old = GuestRegionMmap(MmapRegion.memfd(PAGE), GuestAddress(0))
        holder = GuestMemoryAtomic(GuestMemoryMmap.from_regions([old]))
        holder.memory().write_atomic(wide(8), 42)
        holder.remove_region(GuestAddress(0), PAGE)
        moved = GuestRegionMmap(old.mapping, GuestAddress(0x10_0000))
        holder.insert_region(moved)
        gc.collect()
        results["old_close"] = outcome(old.close)
        results["moved_read"] = outcome(lambda: holder.memory().read_atomic(wide(0x10_0008)))
        holder.remove_region(GuestAddress(0x10_0000), PAGE)
        gc.collect()
        results["old_close_when_unused"] = outcome(old.close)
        results["moved_closed"] = moved.closed
        results["reuse"] = outcome(lambda: GuestMemoryMmap.from_regions([moved]))
        results["replace"] = outcome(lambda: GuestRegionMmap(old.mapping, GuestAddress(0)))
    ''')
    assert results["old_close"]["raised"] == "RegionInUse"
    assert results["moved_read"] == {"value": 42}
    assert results["old_close_when_unused"] == {"value": None}
    assert results["moved_closed"] is True
    assert results["reuse"]["raised"] == "MappingError"
    assert results["replace"]["raised"] == "MappingError"


def test_exported_buffer_refuses_close_and_leaves_everything_usable() -> None:
    """A held `as_memoryview` export: close refused (RegionInUse, exported_buffers) with
    the region still whole; once the export is released, the close goes through."""
    results = run_child('''
        region = GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(0))
        memory = GuestMemoryMmap.from_regions([region])
        memory.read_obj(wide(0))
        exported = memory.get_slice(GuestAddress(0), 16).as_memoryview()
        del memory
        gc.collect()
        try:
            region.close()
        except RegionInUse as error:
            results["refused"] = error.exported_buffers
        memory = GuestMemoryMmap.from_regions([region])
        memory.write_atomic(wide(8), 9)
        results["through_export"] = int.from_bytes(exported[8:8 + WIDE_BYTES], sys.byteorder)
        results["read_obj"] = outcome(lambda: memory.read_obj(wide(8)))
        exported.release()
        del memory
        gc.collect()
        results["close"] = outcome(region.close)
        results["closed"] = region.closed
    ''')
    assert results["refused"] is True
    assert results["through_export"] == 9
    assert results["read_obj"] == {"value": 9}
    assert results["close"] == {"value": None}
    assert results["closed"] is True


def test_close_races_memory_construction() -> None:
    """Threads build memories over a region while another closes it: each memory either
    was made before the close (then the close is refused and the memory works) or after
    (then it is refused with MappingError); never a memory over unmapped memory."""
    results = run_child('''
        import time
        violations, made, refused_builds = [], [0], [0]
        for round_ in range(40):
            region = GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(0))
            built = threading.Event()
            def build():
                for _ in range(5000):
                    try:
                        memory = GuestMemoryMmap.from_regions([region])
                    except MappingError:
                        refused_builds[0] += 1
                        return
                    made[0] += 1
                    built.set()
                    memory.write_atomic(wide(0), 1)
                    if memory.read_atomic(wide(0)) != 1:
                        violations.append("lost a store")
                    del memory
                    time.sleep(0)  # a window without a live memory: the close may go
                built.set()
            def close():
                built.wait()
                while not region.closed:
                    try:
                        region.close()
                    except RegionInUse:
                        pass
            threads = [threading.Thread(target=build), threading.Thread(target=build),
                       threading.Thread(target=close)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            try:  # after the close, whoever comes late is refused
                GuestMemoryMmap.from_regions([region])
                violations.append("a closed region joined a memory")
            except MappingError:
                refused_builds[0] += 1
        results["violations"] = violations
        results["made"] = made[0]
        results["refused_builds"] = refused_builds[0]
    ''')
    assert results["violations"] == []
    assert results["made"] > 0 and results["refused_builds"] > 0, results


def test_the_children_can_fail() -> None:
    """The control: an unmap under a raw-pointer atomic really kills a child, and
    `run_child` reports it, so the tests above would see one."""
    code = PRELUDE + textwrap.dedent('''
        import mmap
        mapping = mmap.mmap(-1, PAGE)
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
        gc.collect()
        load = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int)(
            ("__atomic_load_8", ctypes.CDLL("libatomic.so.1")))
        libc = ctypes.CDLL(None)
        libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        libc.munmap(address, PAGE)
        load(address, 5)
    ''')
    child = run_python("-c", code, timeout=CHILD_TIMEOUT)
    assert child.returncode == -11, child


STRESS_BODY: Final = '''
    import random, time, weakref
    DURATION = float(sys.argv[1])
    SLOTS = [0x10_0000 * index for index in range(1, 7)]
    holder = GuestMemoryAtomic(GuestMemory(()))
    stop = threading.Event()
    counts = {"reads": 0, "atomics": 0, "views": 0, "refs": 0, "inserted": 0, "removed": 0,
              "moved": 0, "closed": 0, "close_refused": 0, "collected": 0}
    violations = []

    tokens = {}  # id(mapping) -> the 8 bytes written at its start when it was made

    def signature(mapping):
        return tokens[id(mapping)]

    def user(seed):
        rng = random.Random(seed)
        kept = []
        while not stop.is_set():
            memory = holder.memory()
            regions = memory.regions()
            if not regions:
                continue
            region = rng.choice(regions)
            start = region.start_value
            try:
                if memory.read_bytes(GuestAddress(start), 8) != signature(region.mapping):
                    violations.append(f"bad signature at {start:#x}")
                counts["reads"] += 1
                memory.fetch_add(wide(start + 64), 1)
                memory.read_atomic(wide(start + 64))
                counts["atomics"] += 1
                view = memory.get_slice(GuestAddress(start), PAGE)
                ref = view.get_ref(ctypes.c_uint64, 128)
                ref.fetch_add(1)
                counts["views"] += 1
                kept.append(rng.choice((memory, view, ref)))
                counts["refs"] += 1
            except GuestMemoryError as error:
                violations.append(f"{type(error).__name__}: {error}")
            if len(kept) > 8 or rng.random() < 0.1:
                kept.clear()

    def plugger():
        rng = random.Random(7)
        pending = []
        placed = {}
        while not stop.is_set():
            start = rng.choice(SLOTS)
            current = holder.memory()
            present = current.find_region(GuestAddress(start))
            if present is None:
                mapping = None
                if pending and rng.random() < 0.3:
                    # a hot-plug move: an old mapping placed again
                    old = pending.pop()
                    if not old.closed:
                        mapping = old.mapping
                        counts["moved"] += 1
                if mapping is None:
                    mapping = MmapRegion.memfd(PAGE) if rng.random() < 0.5 else \\
                        MmapRegion.anonymous(PAGE)
                    tokens[id(mapping)] = rng.getrandbits(64).to_bytes(8, "little")
                    mapping.view[:8] = tokens[id(mapping)]  # before any user sees it
                try:
                    region = GuestRegionMmap(mapping, GuestAddress(start))
                except MappingError:
                    continue  # closed meanwhile: allowed, never used
                holder.insert_region(region)
                counts["inserted"] += 1
            else:
                removed = holder.remove_region(GuestAddress(start), PAGE)
                pending.append(removed)
                counts["removed"] += 1
            for candidate in list(pending):
                if rng.random() < 0.5:
                    try:
                        candidate.close()
                        counts["closed"] += 1
                        pending.remove(candidate)
                    except RegionInUse:
                        counts["close_refused"] += 1
            if rng.random() < 0.2:
                gc.collect()
                counts["collected"] += 1
            pending = pending[-16:]

    threading.excepthook = lambda hook: violations.append(
        f"{hook.thread.name} died: {hook.exc_type.__name__}: {hook.exc_value}")
    threads = [threading.Thread(target=user, args=(seed,)) for seed in range(3)]
    threads.append(threading.Thread(target=plugger))
    for thread in threads:
        thread.start()
    # At least DURATION, and on a loaded machine until every activity has happened.
    deadline = time.monotonic() + 20 * DURATION
    time.sleep(DURATION)
    while min(counts.values()) == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()
    results["counts"] = counts
    results["violations"] = violations[:20]
'''


def _stress(seconds: float) -> dict[str, Any]:
    code = PRELUDE + textwrap.dedent(STRESS_BODY) + "\nprint(json.dumps(results))\n"
    child = run_python("-c", code, str(seconds), timeout=seconds + CHILD_TIMEOUT)
    assert child.returncode == 0, f"the stress child died ({child.returncode}):\n{child.stderr}"
    results: dict[str, Any] = json.loads(child.stdout.splitlines()[-1])
    return results


def _check_stress(results: dict[str, Any]) -> None:
    counts = results["counts"]
    assert results["violations"] == []
    for name in ("reads", "atomics", "views", "inserted", "removed", "moved", "closed",
                 "close_refused", "collected"):
        assert counts[name] > 0, f"the stress never exercised {name}: {counts}"


@needs_8_byte_atomics
def test_lifetime_stress_short() -> None:
    """Users, views and refs in three threads while a fourth hot-plugs, moves mappings,
    closes removed regions and collects garbage: no crash, no wrong byte, no refusal
    a user could see."""
    _check_stress(_stress(8.0))


@needs_8_byte_atomics
@pytest.mark.long
def test_lifetime_stress_ten_minutes() -> None:
    """The same stress for ten minutes (`pytest -m long`)."""
    _check_stress(_stress(600.0))
