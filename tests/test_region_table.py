"""The persistent region table at scale: snapshots share structure, yet stay independent.

A hot-plug change makes a new memory object that shares every part of the old one's
table it does not touch (chunks of regions, page-table buckets; `vm_memory/region_table.py`
and `_fastpath.c`). These tests check what that must never break, on the access path
this process runs (the suite runs on both):

- long random sequences of inserts and removes over hundreds of regions (so chunks fill,
  split, shrink and merge), every snapshot kept: each one answers, at the end, exactly
  as a brute-force model of its own regions does (its regions in order, each by index,
  the index search, `find_region`, and reads through every fast path: typed aligned and
  unaligned, atomic, slice — in address order, reversed, and alternating between regions
  twice over, so the compiled region cache is filled, hit and overturned, with regions
  sharing one page and regions spanning many), and its page table and region cache are
  sound;
- old snapshots keep working after many later changes, and once they are the only
  holder of their regions (everything derived from them dropped, the garbage collected);
- threads reading an old snapshot while another thread hot-plugs and drops snapshots
  and collects garbage (in a child process: a lifetime bug would crash it);
- the work of one change is proportional to the change: what one insert or remove
  allocates (tracemalloc sees the C table's PyMem allocations too) barely grows from
  1,000 to 100,000 regions, where copying the table would allocate megabytes. The
  control: the same check run on a copy-everything change fails.
"""
# pyright: reportPrivateUsage=false

from __future__ import annotations

import ctypes
import gc
import json
import mmap
import random
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ByteDevice, run_python_code, scaled

from vm_memory import (
    AlignedGuestAddress,
    DeviceRegion,
    GuestAddress,
    GuestMemory,
    GuestMemoryError,
    GuestMemoryMmap,
    GuestMemoryRegion,
    RegionOverlap,
)
from vm_memory.implementation import compiled
from vm_memory.region_table import (
    CHUNK_BUILD,
    CHUNK_MAX,
    EMPTY_PAGES,
    LOOKUP_SHIFT,
    SMALL_REGION_SLOTS,
    _PageEdit,  # pyright: ignore[reportPrivateUsage]
    build_pages,
)

PAGE = mmap.PAGESIZE
LOOKUP_PAGE = 1 << LOOKUP_SHIFT
BASE = 0x1000_0000
BASE_REGIONS = 3 * CHUNK_BUILD + 40
"""The starting memory: several chunks, one of them partly full."""
SPOTS = BASE_REGIONS + CHUNK_MAX
"""Places for inserted regions: between the base regions and past them."""
SHARING_OFFSETS = (0x100, 0x800)
SMALL_SIZE = 0x300
"""Two small regions at these offsets from a spot share its first lookup page."""


def base_start(index: int) -> int:
    return BASE + 4 * PAGE * index


def spot_start(index: int) -> int:
    """An inserted region's start: between base regions `index` and `index + 1`."""
    return BASE + (4 * index + 2) * PAGE


def marked(memory: GuestMemoryMmap, first_mark: int) -> list[GuestMemoryRegion]:
    """`memory`'s regions, each filled with its own mark byte (1..250)."""
    regions: list[GuestMemoryRegion] = list(memory.regions())
    for number, region in enumerate(regions):
        view = region.buffer
        assert view is not None
        view[:] = bytes([1 + (first_mark + number) % 250]) * region.length
    return regions


@dataclass(frozen=True)
class Parts:
    """The regions the tests combine, each a window of one mapping per group."""

    base: GuestMemoryMmap
    one_page: list[GuestMemoryRegion]
    two_pages: list[GuestMemoryRegion]
    large: GuestMemoryRegion
    sharing: list[tuple[GuestMemoryRegion, GuestMemoryRegion]]
    """Per spot, two small regions on the same lookup page (and on the one-page region's)."""


@cache
def parts() -> Parts:
    base = GuestMemoryMmap.from_ranges(
        [(GuestAddress(base_start(index)), PAGE) for index in range(BASE_REGIONS)],
        one_mapping=True)
    marked(base, 0)
    one = GuestMemoryMmap.from_ranges(
        [(GuestAddress(spot_start(index)), PAGE) for index in range(SPOTS)],
        one_mapping=True)
    two = GuestMemoryMmap.from_ranges(
        [(GuestAddress(spot_start(index)), 2 * PAGE) for index in range(SPOTS)],
        one_mapping=True)
    large_size = (SMALL_REGION_SLOTS + 1) * max(PAGE, LOOKUP_PAGE)
    large = GuestMemoryMmap.from_ranges([(GuestAddress(0x4000_0000), large_size)])
    small = GuestMemoryMmap.from_ranges(
        [(GuestAddress(spot_start(index) + offset), SMALL_SIZE)
         for index in range(SPOTS) for offset in SHARING_OFFSETS], one_mapping=True)
    pairs = marked(small, 53)
    return Parts(base, marked(one, 7), marked(two, 101), marked(large, 200)[0],
                 list(zip(pairs[0::2], pairs[1::2], strict=True)))


def mark_of(region: GuestMemoryRegion) -> int:
    view = region.buffer
    assert view is not None
    return view[0]


def find(model: Sequence[GuestMemoryRegion], value: int) -> GuestMemoryRegion | None:
    """The brute-force answer: the region of `model` holding `value`, if any."""
    for region in model:
        if region.start_value <= value < region.end_value:
            return region
    return None


def reads(memory: GuestMemory, value: int) -> int | None:
    """The byte at `value` through every fast path, which must agree (None where
    nothing is backed: each path's typed error)."""
    answers: list[int | None] = []
    aligned = AlignedGuestAddress.new(ctypes.c_uint8, GuestAddress(value))
    buffer = bytearray(1)

    def slice_byte() -> int:
        memory.read_slice(GuestAddress(value), buffer)
        return buffer[0]

    calls: list[Callable[[], object]] = [
        lambda: memory.read_obj_unaligned(GuestAddress(value), ctypes.c_uint8),
        lambda: memory.read_obj(aligned),
        lambda: memory.read_atomic(aligned),
        slice_byte,
    ]
    for call in calls:
        try:
            answer = call()
        except GuestMemoryError:
            answer = None
        assert answer is None or isinstance(answer, int)
        answers.append(answer)
    assert len(set(answers)) == 1, (hex(value), answers)
    return answers[0]


def check_table(memory: GuestMemory, model: Sequence[GuestMemoryRegion]) -> None:
    """The cheap checks: the regions in order, by index and by the index search, and
    a complete, sound page table."""
    assert memory.num_regions() == len(model)
    assert list(memory.regions()) == list(model)
    for index, region in enumerate(model):
        assert memory._nth_region(index) is region
        assert memory._index_at(region.start_value) == index
        assert memory._index_at(region.end_value - 1) == index
        assert memory._index_at(region.start_value - 1) == index - 1
    for region in model:
        first = region.start_value >> LOOKUP_SHIFT
        last = (region.end_value - 1) >> LOOKUP_SHIFT
        if last - first >= SMALL_REGION_SLOTS:
            continue
        for page in range(first, last + 1):
            guessed = memory._page_guess(page << LOOKUP_SHIFT)
            assert guessed is not None, ("no guess", hex(page << LOOKUP_SHIFT))
            assert any(guessed is held for held in model), "a guess of another memory"
            assert guessed.start_value >> LOOKUP_SHIFT <= page \
                <= (guessed.end_value - 1) >> LOOKUP_SHIFT


def cached_guess(memory: GuestMemory, value: int) -> object:
    """The compiled region cache's guess for `value`'s page (None: an empty slot)."""
    assert compiled is not None
    return compiled.MemoryCore._cached_region(memory, value)


ALTERNATION_STRIDE = 5
"""The alternating order takes every 5th value: each lookup lands in another region."""


def check_lookups(memory: GuestMemory, model: Sequence[GuestMemoryRegion],
                  rng: random.Random) -> None:
    """Lookups at the interesting addresses of a sample of regions (and around them)
    against the brute force: in address order, reversed, then alternating between
    regions twice over (the region cache cold, filled, then answering or overturned).
    On the compiled path, each slot a lookup leaves names one of `model`'s regions and,
    after a hit, the region found."""
    sample = rng.sample(model, min(len(model), 60)) if model else []
    values = sorted({value for region in sample for value in (
        region.start_value - 1, region.start_value, region.start_value + 0x41,
        region.end_value - 1, region.end_value) if value >= 0} | {0, BASE - 1})
    alternating = [value for first in range(ALTERNATION_STRIDE)
                   for value in values[first::ALTERNATION_STRIDE]]
    for order in (values, values[::-1], alternating, alternating):
        for value in order:
            expected = find(model, value)
            assert memory.find_region(GuestAddress(value)) is expected, hex(value)
            assert reads(memory, value) == (None if expected is None
                                            else mark_of(expected)), hex(value)
            if compiled is not None:
                guess = cached_guess(memory, value)
                assert guess is None or any(guess is held for held in model), hex(value)
                assert expected is None or guess is expected, hex(value)


Step = tuple[str, int, int]
"""("insert", spot, variant) / ("remove", index, 0) / ("run", spot, count): a variant is
one page, two pages, the large region, or one of the spot's two small regions sharing a
lookup page (see `Parts`); a run
inserts `count` one-page regions at consecutive free spots (filling a chunk), or
(negative count) removes that many consecutive regions."""

plans = st.lists(st.one_of(
    st.tuples(st.just("insert"), st.integers(0, SPOTS - 1), st.integers(0, 4)),
    st.tuples(st.just("remove"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("run"), st.integers(0, SPOTS - 1),
              st.integers(-CHUNK_MAX, CHUNK_MAX))), min_size=1, max_size=12)


def apply(plan: list[Step]) -> list[tuple[GuestMemory, list[GuestMemoryRegion]]]:
    """Every snapshot `plan` makes from the base memory, with its model."""
    table = parts()
    memory: GuestMemory = table.base
    model: list[GuestMemoryRegion] = list(table.base.regions())
    made: list[tuple[GuestMemory, list[GuestMemoryRegion]]] = [(memory, model)]

    def insert(region: GuestMemoryRegion) -> None:
        nonlocal memory, model
        if any(held.start_value < region.end_value and region.start_value < held.end_value
               for held in model):
            with pytest.raises(RegionOverlap):
                memory.insert_region(region)
            return
        memory = memory.insert_region(region)
        model = sorted([*model, region], key=lambda held: held.start_value)
        made.append((memory, model))

    def remove(index: int) -> None:
        nonlocal memory, model
        held = model[index]
        memory, removed = memory.remove_region(held.start, held.length)
        assert removed is held
        model = model[:index] + model[index + 1:]
        made.append((memory, model))

    for action, where, amount in plan:
        if action == "insert":
            variants = (table.one_page[where], table.two_pages[where], table.large,
                        *table.sharing[where])
            insert(variants[amount])
        elif action == "remove":
            if model:
                remove(where % len(model))
        elif amount >= 0:
            for spot in range(where, min(where + amount, SPOTS)):
                if find(model, spot_start(spot)) is None:
                    insert(table.one_page[spot])
        else:
            for _ in range(-amount):
                if not model:
                    break
                remove(min(where, len(model) - 1))
    return made


SNAPSHOT_EXAMPLES = scaled(25, at_least=5)
"""Each example checks every snapshot of up to a dozen changes over hundreds of regions:
25 natively, 5 under an emulator (`support.scaled`), where this test alone was 44 % of a
port's `CORE` run (129 s of 291 s on arm64). Every example still goes through the whole
C table (its chunks, page buckets and region cache) built for the port."""


@settings(max_examples=SNAPSHOT_EXAMPLES)
@given(plans, st.randoms(use_true_random=False))
def test_every_snapshot_answers_as_its_own_model(plan: list[Step],
                                                 rng: random.Random) -> None:
    made = apply(plan)
    for memory, model in made:  # every snapshot, after every later change
        check_table(memory, model)
    for memory, model in [*rng.sample(made, min(len(made), 4)), made[0], made[-1]]:
        check_lookups(memory, model, rng)


def test_chunks_split_and_merge_along_a_long_sequence() -> None:
    """A fixed long sequence (fill one chunk past CHUNK_MAX, drain it, hot-plug at
    random): every snapshot still answers as its model at the end."""
    rng = random.Random(13)
    plan: list[Step] = [("run", 0, CHUNK_MAX + 10), ("run", 5, -(CHUNK_MAX - 20))]
    plan += [(rng.choice(("insert", "remove")), rng.randrange(SPOTS), rng.randrange(5))
             for _ in range(scaled(150, at_least=30))]  # 30 under an emulator
    made = apply(plan)
    assert len(made) > 2 * CHUNK_MAX
    for memory, model in made:
        check_table(memory, model)
    for memory, model in made[::40]:
        check_lookups(memory, model, rng)


def test_the_page_table_built_at_once_is_the_one_built_a_region_at_a_time() -> None:
    """`build_pages` (every page of every region in one pass) names the same region for
    each page as adding the regions one at a time does (`_PageEdit`, what an insert
    uses): the first region on a page, every page of a small region (up to
    SMALL_REGION_SLOTS), none of a larger one; a bucket no page lands in stays the
    shared empty one. The control: the layout has a page two regions share, a region of
    exactly SMALL_REGION_SLOTS pages and one a page longer (and a one-page layout)."""
    def region(start: int, length: int) -> GuestMemoryRegion:
        return GuestMemoryRegion(GuestAddress(start), length, read_only=False)

    small = SMALL_REGION_SLOTS * LOOKUP_PAGE
    mixed = [region(BASE, 0x800), region(BASE + 0x800, 0x800),    # two on one page
             region(BASE + LOOKUP_PAGE + 8, LOOKUP_PAGE),          # across two pages
             region(BASE + 4 * LOOKUP_PAGE, small),                # just small
             region(BASE + 4 * LOOKUP_PAGE + small, small + 1),    # just too large
             region(BASE + 64 * LOOKUP_PAGE, 1)]
    one_page = [region(BASE + index * 3 * LOOKUP_PAGE, LOOKUP_PAGE) for index in range(600)]
    for regions in (mixed, one_page, mixed[:1], []):
        edit = _PageEdit(EMPTY_PAGES)
        for held in regions:
            edit.add(held)
        expected, built = edit.done(), build_pages(regions)
        assert [dict(bucket) for bucket in built] == [dict(bucket) for bucket in expected]
        assert all(bucket is empty for bucket, empty in zip(built, EMPTY_PAGES, strict=True)
                   if not bucket)
    pages = build_pages(mixed)
    named = {page: held for bucket in pages for page, held in bucket.items()}
    assert named[BASE] is mixed[0], "the first region on a shared page"
    assert sum(held is mixed[3] for held in named.values()) == SMALL_REGION_SLOTS
    assert all(held is not mixed[4] for held in named.values())
    assert len(named) == 1 + 2 + SMALL_REGION_SLOTS + 1
    # a page's key is its first address; a one-page region from a page's first byte is
    # keyed by its own start (no int made for it: RSS of a large build)
    keys = {key: held for bucket in build_pages(one_page) for key, held in bucket.items()}
    assert len(keys) == len(one_page)
    assert all(key is held.start_value for key, held in keys.items())


def test_the_table_checks_can_fail() -> None:
    """The controls: a snapshot checked against its successor's model (one region
    more) fails both checks."""
    table = parts()
    memory = table.base
    model = list(memory.regions())
    bigger = memory.insert_region(table.one_page[3])
    with pytest.raises(AssertionError):
        check_table(memory, sorted([*model, table.one_page[3]],
                                   key=lambda held: held.start_value))
    with pytest.raises(AssertionError):
        check_lookups(memory, [*model, table.one_page[3]], random.Random(0))
    check_table(bigger, sorted([*model, table.one_page[3]], key=lambda held: held.start_value))


def test_an_old_snapshot_outlives_everything_derived_from_it() -> None:
    """A snapshot, changed many times over and then the only holder of its regions
    (every later snapshot dropped, garbage collected), answers as before; so does the
    last snapshot once the first is gone."""
    table = parts()
    rng = random.Random(7)
    first = table.base.insert_region(table.one_page[1])
    first_model = sorted([*table.base.regions(), table.one_page[1]],
                         key=lambda held: held.start_value)
    memory: GuestMemory = first
    for _ in range(400):
        spot = rng.randrange(SPOTS)
        region = table.one_page[spot]
        if memory.holds(region):
            memory, _ = memory.remove_region(region.start, region.length)
        elif find(list(memory.regions()), region.start_value) is None:
            memory = memory.insert_region(region)
    last, last_model = memory, list(memory.regions())
    del memory
    gc.collect()
    check_table(first, first_model)
    check_lookups(first, first_model, rng)
    del first
    gc.collect()
    check_table(last, last_model)
    check_lookups(last, last_model, rng)


def test_threads_read_old_snapshots_while_another_hot_plugs() -> None:
    """Readers keep reading an old snapshot's bytes (every fast path) while a writer
    thread inserts and removes regions, drops each snapshot and collects garbage; in a
    child process, so a use after free would crash it rather than the suite."""
    result = run_python_code('''
        import ctypes, gc, random, threading
        from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap
        PAGE = __import__("mmap").PAGESIZE
        base = GuestMemoryMmap.from_ranges(
            [(GuestAddress(0x100000 + 4 * PAGE * i), PAGE) for i in range(700)],
            one_mapping=True)
        for number, region in enumerate(base.regions()):
            region.buffer[:] = bytes([1 + number % 250]) * PAGE
        extra = GuestMemoryMmap.from_ranges(
            [(GuestAddress(0x100000 + (4 * i + 2) * PAGE), PAGE) for i in range(700)],
            one_mapping=True)
        old = base.insert_region(extra.regions()[0])
        expected = {r.start_value: r.buffer[0] for r in old.regions()}
        starts = sorted(expected)
        stop = threading.Event()
        failures, reads = [], [0]

        def reader(seed):
            rng = random.Random(seed)
            while not stop.is_set():
                start = rng.choice(starts) + rng.randrange(PAGE)
                aligned = AlignedGuestAddress.new(ctypes.c_uint8, GuestAddress(start))
                got = (old.read_obj(aligned), old.read_atomic(aligned),
                       old.read_obj_unaligned(GuestAddress(start), ctypes.c_uint8),
                       old.read_bytes(GuestAddress(start), 1)[0])
                want = expected[start - (start - 0x100000) % (2 * PAGE)]
                if set(got) != {want}:
                    failures.append((hex(start), got, want))
                reads[0] += 1

        def plugger():
            rng = random.Random(1)
            memory = old
            for step in range(3000):
                region = extra.regions()[rng.randrange(700)]
                if memory.holds(region):
                    memory, _ = memory.remove_region(region.start, region.length)
                elif memory.find_region(region.start) is None:
                    memory = memory.insert_region(region)
                if step % 100 == 0:
                    gc.collect()
            del memory
            gc.collect()

        threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(3)]
        for thread in threads:
            thread.start()
        plugging = threading.Thread(target=plugger)
        plugging.start()
        plugging.join()
        stop.set()
        for thread in threads:
            thread.join()
        del base, extra
        gc.collect()
        assert all(old.read_bytes(GuestAddress(s), 1)[0] == v for s, v in expected.items())
        print("failures", failures[:3], "reads", reads[0] > 0)
    ''')
    assert result.returncode == 0, result.stderr
    assert "failures [] reads True" in result.stdout, result.stdout


# ---- Work proportional to the change ----------------------------------------------------

SMALL_TABLE = 1_000
LARGE_TABLE = 100_000
GROWTH_BOUND = 160 * 1024
"""What one change may allocate more at 100,000 regions than at 1,000: the chunk index
(n/256..n/128 entries) and one page-table bucket (C: the directory, n/128..n/256
pointers; pure: the dict of page % 251, n/251 entries) — about 35 KB compiled and 70 KB
pure at 100,000. Copying the whole table allocates megabytes there."""


def device_memory(count: int) -> GuestMemory:
    """`count` one-lookup-page device regions (no host memory: cheap to make at any size
    and on any page size; the table treats them as any region)."""
    device = ByteDevice(bytes(LOOKUP_PAGE))
    return GuestMemory(DeviceRegion(device, GuestAddress(BASE + 2 * LOOKUP_PAGE * index),
                                    LOOKUP_PAGE) for index in range(count))


@pytest.fixture(scope="module")
def device_memories() -> dict[int, GuestMemory]:
    """The two tables, made once for the module (and let go after it)."""
    return {count: device_memory(count) for count in (SMALL_TABLE, LARGE_TABLE)}


def change_allocations(memory: GuestMemory,
                       change: Callable[[GuestMemory, GuestMemoryRegion], object]) -> int:
    """Bytes allocated at most while `change` inserts (then removes) one region into
    `memory` (tracemalloc's peak above what was held before; it sees the C table's
    PyMem allocations as well as Python objects)."""
    region = DeviceRegion(ByteDevice(bytes(LOOKUP_PAGE)), GuestAddress(BASE + LOOKUP_PAGE),
                          LOOKUP_PAGE)
    gc.collect()
    tracemalloc.start()
    try:
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        kept = change(memory, region)
        peak = tracemalloc.get_traced_memory()[1] - held
    finally:
        tracemalloc.stop()
    del kept
    return peak


def hot_plug(memory: GuestMemory, region: GuestMemoryRegion) -> object:
    bigger = memory.insert_region(region)
    return bigger, bigger.remove_region(region.start, region.length)


def copy_everything(memory: GuestMemory, region: GuestMemoryRegion) -> object:
    """What a copy-everything table does per change (for the control): a new memory
    built over a copy of all the regions."""
    return GuestMemory([*memory.regions(), region])


@pytest.mark.parametrize("change", [hot_plug, copy_everything], ids=["hot_plug", "control"])
def test_one_change_allocates_about_the_same_at_any_size(
        change: Callable[[GuestMemory, GuestMemoryRegion], object],
        device_memories: dict[int, GuestMemory]) -> None:
    small = change_allocations(device_memories[SMALL_TABLE], change)
    large = change_allocations(device_memories[LARGE_TABLE], change)
    if change is copy_everything:  # the control: a copy of the table is caught
        assert large - small > GROWTH_BOUND, (small, large)
    else:
        assert large - small <= GROWTH_BOUND, (small, large)


# ---- The private table calls refuse what would make a wrong table ------------------------

HOSTILE_TABLE_CALLS = {
    # case: (the call on `fresh` (a new memory made by __new__, one per case) or on `live`
    # (a constructed memory), the error expected)
    "changed, index negative": ("fresh._install_changed(live, -1, spare)", "ValueError"),
    "changed, index past the end": ("fresh._install_changed(live, 9, spare)", "ValueError"),
    "changed, index huge": ("fresh._install_changed(live, 1 << 70, spare)", "OverflowError"),
    "changed, index not an int": ("fresh._install_changed(live, '0', spare)", "TypeError"),
    "changed, unsorted": ("fresh._install_changed(live, 2, spare)", "ValueError"),
    "changed, the region twice": ("fresh._install_changed(live, 1, held[0])", "ValueError"),
    "changed, overlapping before": ("fresh._install_changed(live, 1, tail)", "ValueError"),
    "changed, overlapping after": ("fresh._install_changed(live, 1, head)", "ValueError"),
    "changed, not a region": ("fresh._install_changed(live, 1, 'region')", "TypeError"),
    "changed, old not a memory": ("fresh._install_changed(held, 1, None)", "TypeError"),
    "changed, old not installed": ("fresh._install_changed(blank, 0, spare)", "ValueError"),
    "removed, index negative": ("fresh._install_changed(live, -1, None)", "ValueError"),
    "removed, index past the end": ("fresh._install_changed(live, 3, None)", "ValueError"),
    "changed, a live memory": ("live._install_changed(other, 0, None)", "AttributeError"),
    "installed, a live memory": ("live._install((spare,))", "AttributeError"),
    "installed, not a tuple": ("fresh._install(list(held))", "TypeError"),
    "installed, unsorted": ("fresh._install(tuple(reversed(held)))", "TypeError"),
    "installed, the region twice": ("fresh._install((held[0], held[0]))", "TypeError"),
    "installed, overlapping": ("fresh._install((held[0], tail))", "TypeError"),
    "installed, not regions": ("fresh._install((1, 2))", "TypeError"),
}


def test_private_table_calls_refuse_hostile_arguments() -> None:
    """`_install` and `_install_changed` called directly with what no caller of theirs
    passes (a wrong index, a foreign object, an unsorted or overlapping result, a
    memory already installed): a typed error each, on both paths alike, never a crash
    (a child process) nor a wrong table; the live memory keeps its regions, and the
    memory the refused calls were made on still takes a valid change afterwards."""
    cases = "\n".join(f"            {name!r}: {call!r}," for name, (call, _) in
                      HOSTILE_TABLE_CALLS.items())
    result = run_python_code('''
        from vm_memory import DeviceRegion, GuestAddress, GuestMemory
        class Device:
            def read(self, offset, size): return bytes(size)
            def write(self, offset, data): pass
        device = Device()
        def region(start, length):
            return DeviceRegion(device, GuestAddress(start), length)
        held = [region(0x1000, 0x1000), region(0x3000, 0x800), region(0x5000, 0x1000)]
        live = GuestMemory(held)
        other = GuestMemory([region(0x9000, 0x10)])
        spare = region(0x100, 0x10)          # before every region of `live`
        tail = region(0x1800, 0x100)         # inside held[0]
        head = region(0x2000, 0x1001)        # into held[1]
        blank = GuestMemory.__new__(GuestMemory)
        CASES = {
    ''' + cases + '''
        }
        reusable = True
        for name, call in CASES.items():
            fresh = GuestMemory.__new__(GuestMemory)
            try:
                eval(call)
                print(name, "=> accepted")
            except Exception as error:
                print(name, "=>", type(error).__name__)
            if call.startswith("fresh."):
                try:   # the memory the refused call was made on: still a clean slate
                    fresh._install_changed(live, 0, spare)
                    reusable &= list(fresh.regions()) == [spare, *held] \
                        and fresh.find_region(GuestAddress(0x10f)) is spare
                except Exception:
                    reusable = False
        print("live memory kept its table:", list(live.regions()) == held
              and all(live.find_region(r.start) is r for r in held))
        print("valid change after each refusal:", reusable)
    ''')
    outcomes = dict(line.split(" => ") for line in result.stdout.splitlines()
                    if " => " in line)
    assert outcomes == {name: error for name, (_, error) in HOSTILE_TABLE_CALLS.items()}
    assert result.returncode == 0, result.stderr
    assert "live memory kept its table: True" in result.stdout
    assert "valid change after each refusal: True" in result.stdout


@pytest.mark.parametrize("pure", ["0", "1"], ids=["compiled", "pure"])
def test_a_memory_made_by_new_alone_is_empty_on_both_paths(pure: str) -> None:
    """`GuestMemory.__new__` without `__init__` (as hot-plug makes its new objects, then
    installs a table): until a table is installed the memory answers as an empty one, on
    both paths alike (the pure path raised AttributeError here), refuses hot-plug from
    it, and still takes its one table."""
    result = run_python_code('''
        import ctypes, json
        from vm_memory import (AlignedGuestAddress, GuestAddress, GuestMemoryMmap,
                               access_path)
        def outcome(call):
            try:
                return repr(call())
            except Exception as error:
                return type(error).__name__
        blank = GuestMemoryMmap.__new__(GuestMemoryMmap)
        other = GuestMemoryMmap.from_ranges([(GuestAddress(0x1000), 0x1000)])
        region = other.regions()[0]
        at = AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(0x1000))
        results = {name: outcome(call) for name, call in {
            "num_regions": blank.num_regions, "regions": blank.regions,
            "find_region": lambda: blank.find_region(GuestAddress(0x1000)),
            "read_obj": lambda: blank.read_obj(at),
            "read_atomic": lambda: blank.read_atomic(at),
            "write_slice": lambda: blank.write_slice(GuestAddress(0x1000), b"x"),
            "last_addr": blank.last_addr,
            "insert_region": lambda: blank.insert_region(region),
            "then installed": lambda: (blank._install((region,)),
                                       blank.read_obj(at), blank.num_regions()),
        }.items()}
        print(access_path().name, json.dumps(results))
    ''', environment={"VM_MEMORY_PURE": pure})
    assert result.returncode == 0, result.stderr
    path, _, results = result.stdout.strip().partition(" ")
    assert path == ("pure" if pure == "1" else "compiled")
    assert json.loads(results) == {
        "num_regions": "0", "regions": "()", "find_region": "None",
        "read_obj": "InvalidGuestAddress", "read_atomic": "InvalidGuestAddress",
        "write_slice": "PartialBuffer", "last_addr": "InvalidGuestAddress",
        "insert_region": "ValueError", "then installed": "(None, 0, 1)"}
