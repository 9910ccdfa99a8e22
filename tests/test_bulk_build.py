"""The bulk one-mapping build (`from_ranges(..., one_mapping=True)`): its regions are made
in one loop per batch (in C on the compiled path) and recorded in a ledger per mapping
rather than a weak reference each. They must be indistinguishable from regions placed one
by one (`GuestRegionMmap.place_many` over `MmapRegion.anonymous_windows`, the slow way),
refuse what the slow way refuses, and close as windows do: never while any memory holds
any region of the mapping, all together once nothing does.

Scenarios that could unmap memory under a user run in a child process (a use after an
unmap is a SIGSEGV), each with a control showing the close does happen. The suite runs
on both paths, so every test here covers the path of its run.
"""

from __future__ import annotations

import pickle
import textwrap
from collections.abc import Mapping
from itertools import repeat
from types import MappingProxyType
from typing import Any, Final

import pytest
from test_lifetimes import run_child

from vm_memory import (
    GuestAddress,
    GuestMemoryError,
    GuestMemoryMmap,
    GuestRegionMmap,
    MmapRegion,
    RegionOverlap,
    access_path,
)
from vm_memory.bulk import each, make_each, set_each, slot_setter
from vm_memory.mmap_region import cut_anonymous_windows
from vm_memory.region import _FIXED, is_region  # pyright: ignore[reportPrivateUsage]

PAGE: Final = 4096
STRIDE: Final = 0x10000

SLOW_BUILD: Final = '''
from vm_memory.mmap_memory import _ranges

def slow_build(ranges):
    """What from_ranges(one_mapping=True) did before the bulk build: one by one."""
    ranges = list(_ranges(ranges))
    windows = MmapRegion.anonymous_windows([size for _, size in ranges])
    try:
        return GuestMemoryMmap.from_regions(GuestRegionMmap.place_many(
            (window, start) for window, (start, _) in zip(windows, ranges)))
    except BaseException:
        windows[0].close()
        raise
'''


def _ranges(count: int, *, reverse: bool = False) -> list[tuple[GuestAddress, int]]:
    indexes = range(count - 1, -1, -1) if reverse else range(count)
    return [(GuestAddress(index * STRIDE), PAGE * (1 + index % 3)) for index in indexes]


def _fields(region: GuestRegionMmap) -> dict[str, Any]:
    """Everything a region is made of (the trusted fields, its mapping and dirty bitmap,
    and the pure base's own field where it has one)."""
    names = sorted(_FIXED | {"mapping", "dirty", "atomic_untracked_limit"})
    return {name: getattr(region, name) for name in names if hasattr(region, name)}


def _refusal(action: Any, *arguments: object) -> tuple[str, str]:
    """The class and message of what `action(*arguments)` raises (it must raise)."""
    with pytest.raises(Exception) as raised:
        action(*arguments)
    return type(raised.value).__name__, str(raised.value)


# ---- Indistinguishable from the slow way -----------------------------------------------


@pytest.mark.parametrize("reverse", [False, True], ids=["ascending", "descending"])
def test_a_bulk_region_is_the_region_placed_one_by_one(reverse: bool) -> None:
    """Each region of the bulk build equals a region placed on the same window at the
    same start the slow way, field by field (host pointers included), in repr, class,
    admission and every refusal of a second construction, assignment or pickling."""
    memory = GuestMemoryMmap.from_ranges(_ranges(40, reverse=reverse), one_mapping=True)
    regions = memory.regions()
    assert _fields(regions[0]) != _fields(regions[1]), "the control: fields tell apart"
    assert [region.start_value for region in regions] == sorted(
        index * STRIDE for index in range(40)), "sorted by start, whatever the input order"
    for fast in regions:
        slow = GuestRegionMmap(fast.mapping, fast.start)  # a second placement, slow way
        assert type(fast) is GuestRegionMmap
        assert type(slow) is GuestRegionMmap
        assert _fields(fast) == _fields(slow)
        assert fast.buffer is fast.mapping.view, "one view: the window's is the region's"
        assert fast.mapping.size == fast.length == len(fast.mapping.view)
        assert repr(fast) == repr(slow)
        assert _refusal(pickle.dumps, fast) == _refusal(pickle.dumps, slow)
        assert _refusal(GuestRegionMmap.__init__, fast, fast.mapping, fast.start) == \
            _refusal(GuestRegionMmap.__init__, slow, slow.mapping, slow.start)
        for name in sorted(GuestRegionMmap.fixed_attributes):
            assert _refusal(setattr, fast, name, None) == _refusal(setattr, slow, name, None)
        alone = GuestMemoryMmap([fast])  # admitted alone too, and reaches its bytes
        alone.write_slice(fast.start, b"\x5a" * 8)
        assert alone.read_bytes(fast.start, 8) == b"\x5a" * 8
        assert bytes(slow.mapping.view[:8]) == b"\x5a" * 8, "the same bytes, placed twice"
        assert is_region(fast)


def test_a_bulk_window_is_the_window_cut_one_by_one() -> None:
    """The windows under a bulk build are what `anonymous_windows` returns: neighbours on
    the host, each exactly its size, sharing one owner."""
    memory = GuestMemoryMmap.from_ranges(_ranges(12), one_mapping=True)
    windows = [region.mapping for region in memory.regions()]
    reference = MmapRegion.anonymous_windows([window.size for window in windows])
    assert [(window.size, window.offset, window.file_offset, window.fd, window.read_only,
             window.shared, len(window.view), window.host_address - windows[0].host_address)
            for window in windows] == \
        [(window.size, window.offset, window.file_offset, window.fd, window.read_only,
          window.shared, len(window.view), window.host_address - reference[0].host_address)
         for window in reference]
    assert len({id(window.mapping) for window in windows}) == 1
    assert [repr(window) for window in windows] == [repr(window) for window in reference]


def test_bulk_regions_at_unaligned_starts_are_placed_as_one_by_one() -> None:
    """Starts that are not multiples of 8 give a region no atomic fast path (its host
    address is not aligned as its guest address is): the bulk build derives each
    region's limits from its own start, as a placement one by one does. The control:
    the layout has regions of both kinds."""
    offsets = (0, 4, 1, 8, 2, 0x10)
    ranges = [(GuestAddress(index * STRIDE + offset), PAGE)
              for index, offset in enumerate(offsets)]
    memory = GuestMemoryMmap.from_ranges(ranges, one_mapping=True)
    regions = memory.regions()
    assert sorted({region.atomic_read_limit == -1 for region in regions}) == [False, True]
    for fast in regions:
        assert _fields(fast) == _fields(GuestRegionMmap(fast.mapping, fast.start))


def test_the_fields_a_cut_hands_on_are_the_windows_own() -> None:
    """On the pure path `from_ranges` places the windows it has just cut by the fields
    the cut gave them (`CutFields`), not reading them back and checking each: those must
    be each window's own, in order. The compiled cutter hands on none (its placement
    reads the windows in C)."""
    windows, fields = cut_anonymous_windows([PAGE, 3 * PAGE, 100, PAGE])
    if access_path().name == "compiled":
        assert fields is None
        return
    assert fields is not None
    assert list(fields.sizes) == [window.size for window in windows] == \
        [PAGE, 3 * PAGE, 100, PAGE]
    assert type(fields.sizes) is tuple, "what is vouched for cannot be changed in place"
    assert type(fields.windows) is tuple
    assert fields.read_only is False
    assert all(window.read_only is False for window in windows)
    assert cut_anonymous_windows([]) == ([], None)


def test_fields_vouched_for_other_windows_are_not_trusted() -> None:
    """`CutFields` vouches only for the very windows of its cut, all of them, in order:
    placed with a part of the batch, the batch reordered (a new list, or the list the
    cut handed back changed in place) or another batch's windows,
    the windows are read and checked as any list is, so each region is its window's size
    and an access past it is a typed refusal (on the pure path, trusting the sizes made a
    region 16 pages long on a one-page window, and an atomic store past its mapping
    killed the process: a child, so a crash is seen). The control: the batch's own
    windows are vouched for."""
    results = run_child('''
        from vm_memory.mmap_region import cut_anonymous_windows, place_windows
        windows, fields = cut_anonymous_windows([16 * PAGE, PAGE])
        other, other_fields = cut_anonymous_windows([PAGE, 16 * PAGE])
        results["own"] = fields is None or fields.vouches_for(windows)
        cases = {"a part": (windows[1:], fields), "reordered": (windows[::-1], fields),
                 "another batch's": (windows, other_fields),
                 "changed in place": (windows, fields)}
        windows[0], windows[1] = windows[1], windows[0]  # the list the cut handed back
        for name, (chosen, vouched) in cases.items():
            if vouched is not None:
                results[name + " vouched"] = vouched.vouches_for(chosen)
            starts = [GuestAddress(index * 0x100000) for index in range(len(chosen))]
            placed = place_windows(chosen, starts, vouched)
            regions = placed[0] if placed is not None else []
            results[name + " lengths"] = [region.length for region in regions]
            results[name + " sizes"] = [window.size for window in chosen]
            memory = GuestMemoryMmap.from_regions(sorted(regions, key=lambda r: r.start_value))
            results[name + " store"] = outcome(lambda: memory.write_atomic(wide(8 * PAGE), 1))
    ''')
    assert results.pop("own") is True
    for name in ("a part", "reordered", "another batch's", "changed in place"):
        assert results.pop(name + " vouched", False) is False, name
        assert results[name + " lengths"] == results[name + " sizes"], (name, results)
        store = results[name + " store"]
        if results[name + " sizes"][0] == PAGE:  # no region holds 0x8000
            assert store.get("raised") == "InvalidGuestAddress", (name, store)
        else:  # the 16-page window is first: 0x8000 is inside it
            assert store == {"value": None}, (name, store)


def test_a_window_changed_since_it_was_cut_is_placed_as_one_by_one() -> None:
    """A window whose field was changed behind its back (`object.__setattr__`) after it
    was cut is still placed as `place_many` places it (the pure batch leaves such
    windows to `place_many` rather than compute with a field of the wrong type). The
    control: the change does change the region (no host address: no atomic fast path)."""
    windows = MmapRegion.anonymous_windows([PAGE, PAGE])
    starts = [GuestAddress(0), GuestAddress(STRIDE)]
    object.__setattr__(windows[1], "host_address", None)
    memory = GuestMemoryMmap._from_windows(windows, starts)  # pyright: ignore[reportPrivateUsage]
    fast = memory.regions()
    slow = GuestRegionMmap.place_many(zip(windows, starts, strict=True))
    assert [_fields(region) for region in fast] == [_fields(region) for region in slow]
    assert fast[1].host_address is None and fast[1].atomic_read_limit == -1
    assert fast[0].atomic_read_limit != -1


def test_slot_setters_set_only_slots() -> None:
    """`slot_setter` answers a slot's own `__set__` (defined by the class or a base), and
    refuses a name that is no slot or not there at all; `set_each` sets one field of each
    object in order; `make_each` makes objects with every field its setters name, and
    refuses to leave one unset."""
    setter = slot_setter(GuestRegionMmap, "typed_views")  # a slot of a base class
    with pytest.raises(TypeError, match="not a slot"):
        slot_setter(GuestRegionMmap, "fixed_attributes")
    with pytest.raises(AttributeError, match="no slot 'nothing'"):
        slot_setter(GuestRegionMmap, "nothing")
    regions = [GuestRegionMmap.__new__(GuestRegionMmap) for _ in range(3)]
    views: list[Mapping[str, memoryview]] = [MappingProxyType({}) for _ in regions]
    set_each(setter, regions, views)
    assert all(region.typed_views is view for region, view in zip(regions, views, strict=True))
    setters = {"typed_views": setter, "mapping": slot_setter(GuestRegionMmap, "mapping")}
    with pytest.raises(ValueError, match="make_each"):  # a field left unset is refused
        make_each(GuestRegionMmap, setters, 2, {"typed_views": views})
    windows = MmapRegion.anonymous_windows([PAGE, PAGE])
    made = make_each(GuestRegionMmap, setters, 2, {"typed_views": views, "mapping": windows})
    assert [(region.typed_views, region.mapping) for region in made] == \
        [(views[0], windows[0]), (views[1], windows[1])]


def test_each_calls_as_map_does() -> None:
    """`each` (starmap over zip, whose argument tuple is reused) gives what `map` gives,
    up to the shortest iterable, each result its own object."""
    starts, ends = [0, 8, 16], [4, 12, 20, 99]
    assert list(each(slice, starts, ends)) == list(map(slice, starts, ends))
    made = list(each(object.__new__, repeat(GuestRegionMmap, 3)))
    assert len({id(region) for region in made}) == 3
    assert all(type(region) is GuestRegionMmap for region in made)
    assert list(each(divmod, [7, 9], [2, 4])) == [(3, 1), (2, 1)]


def test_subclasses_keep_their_own_admission_and_init() -> None:
    """The bulk path skips per-region admission only for a class that admits as
    GuestMemoryMmap does; a subclass's narrower `_admit` and its own `__init__` still run
    (the control: the same ranges build where the subclass admits them)."""
    class Narrow(GuestMemoryMmap):
        __slots__ = ()

        @classmethod
        def _admit(cls, region: object) -> None:
            super()._admit(region)
            if isinstance(region, GuestRegionMmap) and region.start_value >= 2 * STRIDE:
                raise RegionOverlap(region.start_value, region.length, 0, 0)

    calls: list[int] = []

    class Counted(GuestMemoryMmap):
        __slots__ = ()

        def __init__(self, regions: Any) -> None:
            regions = list(regions)
            calls.append(len(regions))
            super().__init__(regions)

    with pytest.raises(RegionOverlap):
        Narrow.from_ranges(_ranges(3), one_mapping=True)
    assert Narrow.from_ranges(_ranges(2), one_mapping=True).num_regions() == 2
    assert type(Counted.from_ranges(_ranges(5), one_mapping=True)) is Counted
    assert calls == [5]


def test_a_subclass_from_regions_still_makes_the_memory() -> None:
    """A subclass that adds to `from_regions` (a public builder) sees the bulk build
    call it, as the build one by one did; the control: a build of a mapping per range
    calls it too."""
    calls: list[int] = []

    class Logged(GuestMemoryMmap):
        __slots__ = ()

        @classmethod
        def from_regions(cls, regions: Any) -> GuestMemoryMmap:
            regions = list(regions)
            calls.append(len(regions))
            return super().from_regions(regions)

    assert type(Logged.from_ranges(_ranges(4), one_mapping=True)) is Logged
    assert type(Logged.from_ranges(_ranges(3))) is Logged
    assert calls == [4, 3]


def test_a_subclass_with_its_own_new_is_made_through_it() -> None:
    """A subclass whose `__new__` takes the regions (as `cls(regions)` passes them) is
    made through it by the bulk build and by hot-plug, as by the build one by one (the
    shortcut that makes an object with `cls.__new__(cls)` is not for it). The control:
    the build of a mapping per range."""
    made: list[str] = []

    class Tagged(GuestMemoryMmap):
        __slots__ = ()

        def __new__(cls, regions: Any) -> Tagged:
            made.append(cls.__name__)
            return super().__new__(cls)

    assert type(Tagged.from_ranges(_ranges(2))) is Tagged
    memory = Tagged.from_ranges(_ranges(3), one_mapping=True)
    assert type(memory) is Tagged
    smaller, _ = memory.remove_region(GuestAddress(0), PAGE)
    assert type(smaller) is Tagged and smaller.num_regions() == 2
    assert made == ["Tagged"] * 3


# ---- Refuses what the slow way refuses ----------------------------------------------------

BAD_RANGES: Final[dict[str, str]] = {
    "a start that is an int": "[(GuestAddress(0), PAGE), (0x10000, PAGE)]",
    "the last region past 2**64":
        "[(GuestAddress(0), PAGE), (GuestAddress(2**64 - PAGE + 1), PAGE)]",
    "overlapping": "[(GuestAddress(0), 2 * PAGE), (GuestAddress(PAGE), PAGE)]",
    "overlapping out of order":
        "[(GuestAddress(0x20000), PAGE), (GuestAddress(0), PAGE), (GuestAddress(0x800), 1)]",
    "a size of 0": "[(GuestAddress(0), PAGE), (GuestAddress(0x10000), 0)]",
    "a size that is a str": "[(GuestAddress(0), PAGE), (GuestAddress(0x10000), '4096')]",
    "a size that is a bool": "[(GuestAddress(0), PAGE), (GuestAddress(0x10000), True)]",
    "a range that is a list": "[(GuestAddress(0), PAGE), [GuestAddress(0x10000), PAGE]]",
    "a range of three": "[(GuestAddress(0), PAGE), (GuestAddress(0x10000), PAGE, None)]",
    "ranges that are no iterable": "7",
}


def refusals_child(*, warm: bool, leave_mapped: bool = False) -> dict[str, Any]:
    """Build each of `BAD_RANGES` the bulk way, the slow way and a mapping per range, in
    a fresh interpreter (after a good bulk build if `warm`); with every window either
    builder cut recorded (the bulk build's through `cut_anonymous_windows`, which
    `from_ranges` calls, the slow one's through `anonymous_windows`) and whether all are
    unmapped at the end. `leave_mapped` (the control) makes a failed build leave its
    windows mapped."""
    return run_child(SLOW_BUILD + textwrap.dedent(f'''
        from vm_memory import mmap_memory
        from vm_memory.errors import GuestMemoryError
        bad = {{name: eval(text) for name, text in {BAD_RANGES!r}.items()}}
        if {warm!r}:
            GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE)] * 1 +
                                        [(GuestAddress(0x10000), PAGE)], one_mapping=True)
        if {leave_mapped!r}:
            mmap_memory._unmap_now = lambda mappings: None
        made, bulk_made = [], []
        original = MmapRegion.anonymous_windows
        def spy(sizes, *, shared=False):
            made.extend(original(sizes, shared=shared))
            return made[-len(sizes):]
        MmapRegion.anonymous_windows = staticmethod(spy)
        original_cut = mmap_memory.cut_anonymous_windows
        def cut_spy(sizes, *, shared=False):
            windows, fields = original_cut(sizes, shared=shared)
            bulk_made.extend(windows)
            return windows, fields
        mmap_memory.cut_anonymous_windows = cut_spy
        for name, ranges in bad.items():
            answers = {{}}
            for how, build in (("bulk", lambda: GuestMemoryMmap.from_ranges(
                                    ranges, one_mapping=True)),
                               ("slow", lambda: slow_build(ranges)),
                               ("alone", lambda: GuestMemoryMmap.from_ranges(ranges))):
                answers[how] = outcome(build)
            results[name] = answers
        results["all_unmapped"] = all(window.closed for window in made + bulk_made)
        results["windows_made"] = len(made)
        results["bulk_windows_made"] = len(bulk_made)
    '''))


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_the_bulk_build_refuses_what_the_slow_one_refuses(warm: bool) -> None:
    """Each bad layout gets the same typed error (class and message) from the bulk build
    as from the slow one and from a mapping per range, in a fresh interpreter whose first
    build it is (cold) or after a build succeeded (warm); nothing either builder mapped
    stays mapped."""
    results = refusals_child(warm=warm)
    assert results.pop("all_unmapped") is True
    assert results.pop("windows_made") > 0, "the spy saw no windows: the control failed"
    assert results.pop("bulk_windows_made") > 0, "the bulk build's windows went unseen"
    assert set(results) == set(BAD_RANGES)
    for name, answers in results.items():
        assert "raised" in answers["bulk"], (name, answers)
        assert answers["bulk"] == answers["slow"], (name, answers)
        assert answers["bulk"] == answers["alone"], (name, answers)
        assert answers["bulk"]["raised"] in GUEST_MEMORY_ERRORS, (name, answers)


def test_a_failed_build_that_leaves_its_windows_mapped_is_seen() -> None:
    """The control: with a failed build's unmapping disabled, the check above sees
    windows still mapped (it watches what the bulk build actually cuts)."""
    results = refusals_child(warm=False, leave_mapped=True)
    assert results.pop("bulk_windows_made") > 0
    assert results.pop("all_unmapped") is False


def _subclasses(cls: type[Exception]) -> list[type[Exception]]:
    """`cls` and every class below it."""
    found = [cls]
    for direct in cls.__subclasses__():
        found.extend(_subclasses(direct))
    return found


GUEST_MEMORY_ERRORS: Final = {cls.__name__ for cls in _subclasses(GuestMemoryError)}


# ---- Closes ------------------------------------------------------------------------------

CLOSES: Final = '''
def closes(build):
    """Every step of a close's life on a 64-region layout, as observed."""
    seen = {}
    memory = build([(GuestAddress(index * 0x10000), PAGE) for index in range(64)])
    regions = list(memory.regions())
    memory.write_atomic(wide(8), 7)
    memory.write_slice(GuestAddress(63 * 0x10000), b"end")
    seen["after build"] = [outcome(regions[-1].close), outcome(regions[0].mapping.close)]
    smaller = memory
    for region in regions[1:33]:
        smaller, _ = smaller.remove_region(region.start, PAGE)
    seen["after removal"] = [outcome(regions[5].close), outcome(regions[50].close)]
    del memory
    gc.collect()
    seen["after gc of the memory"] = [outcome(regions[5].close),
                                      outcome(regions[5].mapping.close)]
    seen["still works"] = [outcome(lambda: smaller.read_atomic(wide(8))),
                           outcome(lambda: smaller.read_bytes(GuestAddress(63 * 0x10000), 3)
                                   .decode())]
    seen["open"] = [region.closed for region in regions].count(True)
    exported = smaller.get_slice(GuestAddress(63 * 0x10000), 16).as_memoryview()
    del smaller
    gc.collect()
    refused = outcome(regions[40].close)
    seen["exported"] = [refused.get("raised"), [region.closed for region in regions].count(True)]
    again = GuestMemoryMmap(regions[:2])  # a refused close gave every region a live view
    seen["restored"] = outcome(lambda: again.read_atomic(wide(8)))
    del again
    exported.release()
    del regions[2:30]  # some regions gone before the close: their ledger entries too
    gc.collect()
    seen["control"] = outcome(regions[-1].close)
    seen["all closed"] = [region.closed for region in regions].count(False)
    seen["detached"] = [(region.buffer, region.host_address) for region in regions
                        ].count((None, None)) == len(regions)
    seen["reuse"] = outcome(lambda: GuestMemoryMmap([regions[0]])).get("raised")
    return seen
'''


def test_a_bulk_layout_closes_as_one_placed_one_by_one() -> None:
    """A close is refused while any memory holds any region of the mapping — after the
    build, after some were hot-unplugged, after the first memory was collected — and
    while a buffer is exported (every region restored); once nothing holds any, any
    close unmaps all and every region is detached. The bulk build and the slow one give
    the same observations, and the control steps show the refusals are not a default."""
    results = run_child(SLOW_BUILD + CLOSES + textwrap.dedent('''
        results["bulk"] = closes(lambda ranges: GuestMemoryMmap.from_ranges(
            ranges, one_mapping=True))
        results["slow"] = closes(slow_build)
    '''))
    bulk = results["bulk"]
    assert bulk == results["slow"]
    assert [step["raised"] for step in bulk["after build"]] == ["RegionInUse"] * 2
    assert [step["raised"] for step in bulk["after removal"]] == ["RegionInUse"] * 2
    assert [step["raised"] for step in bulk["after gc of the memory"]] == ["RegionInUse"] * 2
    assert bulk["still works"] == [{"value": 7}, {"value": "end"}]
    assert bulk["open"] == 0
    assert bulk["exported"] == ["RegionInUse", 0]
    assert bulk["restored"] == {"value": 7}
    assert bulk["control"] == {"value": None}, "the close happens once nothing holds any"
    assert bulk["all closed"] == 0
    assert bulk["detached"] is True
    assert bulk["reuse"] == "MappingError"


def test_the_ledger_forgets_regions_as_they_go() -> None:
    """A mapping's ledger lists exactly its live placements through many placements,
    collections and compactions (a dangling entry would be a crash: in a child)."""
    results = run_child('''
        memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE),
                                              (GuestAddress(0x10000), PAGE)], one_mapping=True)
        window = memory.regions()[0].mapping
        owner = window._base
        kept = list(memory.regions())
        counts = []
        for round in range(6):
            extra = [GuestRegionMmap(window, GuestAddress(0x100000 * (1 + index)))
                     for index in range(37 * (round + 1))]
            kept.extend(extra[::5])
            del extra
            gc.collect()
            live = owner._live_placements()
            counts.append([len(live), len(kept), all(any(region is mine for mine in kept)
                                                     for region in live)])
        del memory, live
        gc.collect()
        kept = kept[:3]
        gc.collect()
        counts.append([len(owner._live_placements()), len(kept), True])
        results["counts"] = counts
        results["close"] = outcome(window.close)
        results["closed"] = [region.closed for region in kept]
    ''')
    assert all(live == kept and same for live, kept, same in results["counts"]), results
    assert results["counts"][-1][0] == 3
    assert results["close"] == {"value": None}
    assert results["closed"] == [True, True, True]


def test_the_compiled_ledger_refuses_what_it_cannot_record(compiled_path: Any) -> None:
    """`Ledger.add` takes regions in no ledger yet (a region is placed once): anything
    else is refused before any entry is made (the control: a fresh region is taken)."""
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE)])
    placed = memory.regions()[0]
    ledger = compiled_path.Ledger()
    with pytest.raises(ValueError, match="no ledger"):
        ledger.add([placed])
    with pytest.raises(ValueError, match="no ledger"):
        ledger.add([object()])
    with pytest.raises(TypeError):
        ledger.add((placed,))
    assert ledger.live() == []
    fresh = GuestRegionMmap.__new__(GuestRegionMmap)
    ledger.add([fresh])
    assert ledger.live() == [fresh]
    del fresh
    assert ledger.live() == []


# ---- Regions that are going: never handed out again --------------------------------------

DYING: Final = '''
def placed(how, count=1):
    """`count` regions placed on one mapping (a bulk build's windows, or one mapping
    placed at `count` starts), and that mapping's owner."""
    if how == "bulk":
        memory = GuestMemoryMmap.from_ranges(
            [(GuestAddress(index * 0x10000), PAGE) for index in range(count + 1)],
            one_mapping=True)
        regions = list(memory.regions()[:count])
        return regions, regions[0].mapping._base
    mapping = MmapRegion.anonymous(PAGE)
    return [GuestRegionMmap(mapping, GuestAddress(index * 0x10000))
            for index in range(count)], mapping

class Closer:
    """Closes `owner` when it goes, noting how many placements it saw then and what the
    close did."""
    def __init__(self, owner, seen):
        self.owner, self.seen = owner, seen
    def __del__(self):
        self.seen.append(len(self.owner._live_placements()))
        self.seen.append(outcome(self.owner.close).get("raised"))

def by_weak_reference_callback(how):
    (region,), owner = placed(how)
    seen = [len(owner._live_placements())]
    import weakref
    def callback(reference):
        seen.append(len(owner._live_placements()))
        seen.append(outcome(owner.close).get("raised"))
    reference = weakref.ref(region, callback)
    del region
    gc.collect()
    return seen, owner.closed

class Holding(GuestRegionMmap):
    __slots__ = ("held",)

def by_a_slot_finalizer(how):
    mapping = MmapRegion.anonymous(PAGE) if how == "slow" else \\
        MmapRegion.anonymous_windows([PAGE, PAGE])[0]
    region = Holding(mapping, GuestAddress(0))
    owner = mapping if how == "slow" else mapping._base
    seen = [len(owner._live_placements())]
    region.held = Closer(owner, seen)
    del region
    gc.collect()
    return seen, owner.closed

def by_the_trashcan(how):
    """Regions deep in nested lists: past the interpreter's nesting limit their
    deallocation is deferred (count 0, not yet deallocated) while a Closer goes."""
    regions, owner = placed(how, 200)
    nested = []
    for region in regions:
        nested = [region, nested]
    del regions, region
    seen = [len(owner._live_placements())]
    outer = [Closer(owner, seen), nested]
    del nested
    del outer
    gc.collect()
    return seen, owner.closed

for scenario in (by_weak_reference_callback, by_a_slot_finalizer, by_the_trashcan):
    for how in ("bulk", "slow"):
        results[f"{scenario.__name__} {how}"] = scenario(how)
'''


def test_a_region_being_deallocated_is_never_handed_out_again() -> None:
    """A close run while a placed region is being deallocated — from a weak reference's
    callback, a finalizer of something in its slots, or with its deallocation deferred
    by the interpreter's trashcan — does not see that region (handing it out again would
    free it twice: a crash, hence the child), on the bulk layout and on one mapping
    placed by hand; with nothing else placed the close unmaps (in the trashcan's case
    the bulk regions deferred with it still hold their views: refused, as on the pure
    path, whose weak references are dead by then). The control: each region is seen
    before it goes."""
    results = run_child(DYING)
    assert set(results) == {f"{scenario} {how}" for how in ("bulk", "slow") for scenario in
                            ("by_weak_reference_callback", "by_a_slot_finalizer",
                             "by_the_trashcan")}
    for name, ((before, during, refused), closed) in results.items():
        assert before >= 1, (name, before)
        assert during < before, (name, before, during)
        if name != "by_the_trashcan bulk":
            assert (refused, closed) == (None, True), (name, refused)
    assert results["by_the_trashcan bulk"][0][2] in (None, "RegionInUse")


def test_the_compiled_ledger_records_a_region_listed_twice_once(compiled_path: Any) -> None:
    """A region listed twice in one `Ledger.add` gets one entry (two would leave one
    dangling once the region goes: its deallocation clears only its own); the control: a
    region listed once is recorded and forgotten the same way."""
    results = run_child('''
        from vm_memory._fastpath import Ledger
        for name, listed in (("twice", 2), ("once", 1)):
            ledger = Ledger()
            region = GuestRegionMmap.__new__(GuestRegionMmap)
            ledger.add([region] * listed)
            recorded = len(ledger.live())
            del region
            gc.collect()
            results[name] = [recorded, [type(entry).__name__ for entry in ledger.live()]]
    ''')
    assert results == {"twice": [1, []], "once": [1, []]}


def test_lists_changed_while_placing_change_nothing_placed() -> None:
    """`place_windows` reads its lists once: a finalizer the collector runs in the middle
    of placing (here it empties both lists) neither crashes the loop (it held borrowed
    items) nor cuts the placement short. The control: the finalizer did run meanwhile."""
    results = run_child('''
        from vm_memory.mmap_region import place_windows
        count = 3000
        windows = MmapRegion.anonymous_windows([PAGE] * count)
        starts = [GuestAddress(2**40 + 7 + index * 0x10000) for index in range(count)]
        expected = [start.raw_value() for start in starts]
        fired = []
        class Emptier:
            def __init__(self):
                self.cycle = self
            def __del__(self):
                fired.append(True)
                starts.clear()
                windows.clear()
        gc.collect()
        for _ in range(50):
            Emptier()
        results["fired before"] = bool(fired)
        placed = place_windows(windows, starts)
        results["fired"] = bool(fired)
        results["placed"] = None if placed is None else [
            region.start_value for region in placed[0]] == expected
    ''')
    assert results == {"fired before": False, "fired": True, "placed": True}


# ---- The collector as the caller left it --------------------------------------------------


def test_a_build_leaves_the_collector_as_the_caller_left_it() -> None:
    """The build pauses automatic collection, but what a caller does to the collector
    meanwhile (here a subclass's `__init__`, which runs inside the build) stands after
    it, as after a build of a mapping per range: `gc.disable()`, `gc.set_threshold()`;
    and a build started with the collector on or off leaves it so. The control: the
    bulk build is paused (at most the one collection due as it ends, for its 60,000
    objects), while 20,000 lists made outside trigger many."""
    results = run_child('''
        def ranges(count=2):
            return [(GuestAddress(index * 0x10000), PAGE) for index in range(count)]
        class Quiet(GuestMemoryMmap):
            __slots__ = ()
            def __init__(self, regions):
                super().__init__(regions)
                gc.disable()
        class Tuned(GuestMemoryMmap):
            __slots__ = ()
            def __init__(self, regions):
                super().__init__(regions)
                gc.set_threshold(5000, 20, 30)
        original = gc.get_threshold()
        for one_mapping in (True, False):
            gc.enable()
            Quiet.from_ranges(ranges(), one_mapping=one_mapping)
            disabled = not gc.isenabled()
            gc.enable()
            Tuned.from_ranges(ranges(), one_mapping=one_mapping)
            tuned = gc.get_threshold()
            gc.set_threshold(*original)
            GuestMemoryMmap.from_ranges(ranges(), one_mapping=one_mapping)
            enabled = [gc.isenabled(), gc.get_threshold() == original]
            gc.disable()
            GuestMemoryMmap.from_ranges(ranges(), one_mapping=one_mapping)
            enabled.append(gc.isenabled())
            gc.enable()
            results[str(one_mapping)] = [disabled, list(tuned), enabled]
        many = ranges(20000)
        gc.collect()  # the count starts at 0: the few objects made before the pause trigger none
        collections = []
        gc.callbacks.append(lambda phase, info: collections.append(phase == "start"))
        memory = GuestMemoryMmap.from_ranges(many, one_mapping=True)
        results["collections during"] = sum(collections)
        junk = [[index] for index in range(20000)]
        results["collections outside"] = sum(collections) - results["collections during"]
    ''')
    assert results.pop("True") == results.pop("False") == [True, [5000, 20, 30],
                                                             [True, True, False]]
    assert results["collections during"] <= 1
    assert results["collections outside"] >= 10


@pytest.mark.parametrize(("sizes", "spans"), [
    ([PAGE, 1000 * PAGE], [PAGE, PAGE]),   # past the owner's end
    ([PAGE], [4 * PAGE]),                  # a span past the end
    ([0], [PAGE]), ([-5], [PAGE]),          # nothing, or less
    ([2 * PAGE, PAGE], [PAGE, PAGE]),       # overlapping the next
], ids=["size past the end", "span past the end", "size 0", "size negative", "overlap"])
def test_the_compiled_cutter_refuses_a_window_outside_its_owner(
        compiled_path: Any, sizes: list[int], spans: list[int]) -> None:
    """`cut_windows` (the C loop under `anonymous_windows`) makes only windows inside
    their owner's mapping: a window's size is what a placement's length and the raw
    pointer paths trust, and the public `GuestRegionMmap` takes any window. The control:
    windows that fit, up to the owner's last byte, are cut."""
    owner = MmapRegion.anonymous(3 * PAGE)
    with pytest.raises(SystemError, match="outside its owner"):
        compiled_path.cut_windows(MmapRegion, owner, sizes, spans)
    fitting = compiled_path.cut_windows(MmapRegion, owner, [PAGE, 1, PAGE], [PAGE] * 3)
    assert [(window.size, len(window.view), window.offset) for window in fitting] == \
        [(PAGE, PAGE, 0), (1, 1, PAGE), (PAGE, PAGE, 2 * PAGE)]


INTERRUPTED: Final = '''
import weakref

def interrupted_build(at, one_mapping=True):
    """What a two-range `from_ranges` raises when a profiler hook raises a
    KeyboardInterrupt at the first event where `at(frame, event, argument)` holds (where a
    signal handler's could land), where that was, and what of the build's mappings
    outlived it: its mapping objects still alive after a collection, and the lines of
    /proc/self/maps that are new and overlap the host memory of a region made meanwhile
    (counting lines alone would see the interpreter's own allocations: qemu-mips64el
    showed a new 1 MiB pymalloc arena there)."""
    fired, made = [], []
    def interrupt(frame, event, argument):
        if event == "return" and frame.f_code.co_name in ("anonymous", "anonymous_windows"):
            for mapping in argument if isinstance(argument, list) else [argument]:
                if isinstance(mapping, MmapRegion):   # what the build maps, as it is made
                    made.append((weakref.ref(mapping), mapping.host_address, mapping.size))
        if not fired and at(frame, event, argument):
            fired.append(frame.f_code.co_name)
            raise KeyboardInterrupt
    maps_before = set(open("/proc/self/maps").read().splitlines())
    sys.setprofile(interrupt)
    try:
        GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE), (GuestAddress(0x10000), PAGE)],
                                    one_mapping=one_mapping)
        raised = None
    except BaseException as error:
        raised = type(error).__name__
        del error
    finally:
        sys.setprofile(None)
    gc.collect()
    new = set(open("/proc/self/maps").read().splitlines()) - maps_before
    def ours(line):
        low, high = (int(bound, 16) for bound in line.split()[0].split("-"))
        return any(low < host + length and host < high for _, host, length in made)
    return {"raised": raised, "fired in": fired,
            "mapped": len(made) > 0, "mappings made": len(made),
            "mappings alive": sum(mapping() is not None for mapping, _, _ in made),
            "still mapped": sorted(filter(ours, new))}
'''


NOTHING_LEFT: Final[dict[str, object]] = {"mapped": True, "mappings alive": 0, "still mapped": []}
"""What an interrupted build leaves of the mappings it made (it did make some)."""


def nothing_left(results: dict[str, Any]) -> dict[str, Any]:
    """`results` without the count of mappings made (it differs by path and build)."""
    return {key: value for key, value in results.items() if key != "mappings made"}
"""What an interrupted build leaves of the mappings it made (it did make some)."""


def test_an_interrupt_as_the_pause_begins_leaves_the_collector_as_it_was() -> None:
    """A KeyboardInterrupt raised just as the pause takes effect (as `gc.set_threshold`
    returns) propagates, and the collector's thresholds are as before; it comes before
    anything is mapped. The control: the hook does fire inside the pause."""
    results = run_child(INTERRUPTED + textwrap.dedent('''
        original = gc.get_threshold()
        results.update(interrupted_build(lambda frame, event, argument:
                                         event == "c_return" and argument is gc.set_threshold))
        results["thresholds kept"] = gc.get_threshold() == original
    '''))
    assert nothing_left(results) == {"raised": "KeyboardInterrupt",
                                     "fired in": ["_collector_paused"], "thresholds kept": True,
                                     **NOTHING_LEFT, "mapped": False}


@pytest.mark.parametrize("one_mapping", [True, False], ids=["one mapping", "a mapping each"])
def test_an_interrupt_as_the_memory_is_made_is_what_the_caller_sees(one_mapping: bool) -> None:
    """A KeyboardInterrupt raised once the new memory holds its regions (as its
    registration returns) is what the build raises: the cleanup's close, refused because
    that memory holds them, does not replace it; the mappings go with that memory. The
    control: the hook fired in the registration of this build."""
    results = run_child(INTERRUPTED + textwrap.dedent(f'''
        import vm_memory.lifetime as lifetime
        results.update(interrupted_build(
            lambda frame, event, argument: event == "return"
            and frame.f_code is lifetime.register.__code__, one_mapping={one_mapping!r}))
    '''))
    assert nothing_left(results) == {"raised": "KeyboardInterrupt", "fired in": ["register"],
                                     **NOTHING_LEFT}


def test_an_interrupted_build_whose_memory_is_kept_is_seen_mapped() -> None:
    """The control of the two checks above: when something keeps the memory the
    interrupted build made (here the hook, from the registration's frame), its mapping
    objects are alive and their host memory is still in /proc/self/maps."""
    results = run_child(INTERRUPTED + textwrap.dedent('''
        import vm_memory.lifetime as lifetime
        kept = []
        def at_registration(frame, event, argument):
            if event == "return" and frame.f_code is lifetime.register.__code__:
                kept.append(frame.f_locals["holder"])
                return True
            return False
        results.update(interrupted_build(at_registration))
        results["kept"] = [type(memory).__name__ for memory in kept]
    '''))
    assert results.pop("still mapped"), results
    assert nothing_left(results) == {"raised": "KeyboardInterrupt", "fired in": ["register"],
                                     "mapped": True, "mappings alive": results["mappings made"],
                                     "kept": ["GuestMemoryMmap"]}
