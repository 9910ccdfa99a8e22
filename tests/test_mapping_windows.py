"""Regions that share one mapping (`MmapRegion.anonymous_windows`, what `from_ranges`
builds): each region still reaches its own bytes only, and the shared mapping is unmapped
only when no memory object holds any of its regions.

The close scenarios run in a child process (an unmap under a live user is a SIGSEGV, not
an exception), each beside a control that shows the close does happen once nothing
holds the regions. The edge accesses run here, on the path this run of the suite uses
(the suite runs on both); a control shows the neighbour check sees a change.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any, Final

import pytest
from host_assumptions import needs_8_byte_atomics
from test_lifetimes import run_child

from vm_memory import (
    AlignedGuestAddress,
    GuestAddress,
    GuestMemoryError,
    GuestMemoryMmap,
    GuestRegionMmap,
    InvalidArgumentType,
    InvalidRange,
    MmapRegion,
    RegionInUse,
    mmap_memory,
)
from vm_memory.mmap_region import CutFields, cut_anonymous_windows

PAGE: Final = 4096
LOW: Final = 0x1_0000
HIGH: Final = 0x10_0000
EDGE: Final = LOW + PAGE
"""One past the low region's last byte: a gap in guest space, the high region's first
byte on the host."""
NEIGHBOUR: Final = b"\xaa" * PAGE
OWN: Final = b"\x11" * PAGE


def test_windows_are_page_aligned_neighbours_of_exactly_their_size() -> None:
    windows = MmapRegion.anonymous_windows([PAGE, 10, 3 * PAGE])
    assert [window.size for window in windows] == [PAGE, 10, 3 * PAGE]
    assert [window.offset for window in windows] == [0, PAGE, 2 * PAGE]
    assert [len(window.view) for window in windows] == [PAGE, 10, 3 * PAGE]
    base = windows[0].host_address
    assert [window.host_address - base for window in windows] == [0, PAGE, 2 * PAGE]
    assert len({id(window.mapping) for window in windows}) == 1
    windows[1].view[:] = b"x" * 10
    assert bytes(windows[0].view) == bytes(PAGE) and bytes(windows[2].view[:4]) == bytes(4)
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE), (GuestAddress(PAGE), PAGE)],
                                         one_mapping=True)
    first, second = memory.regions()
    assert first.mapping.mapping is second.mapping.mapping, "from_ranges shares a mapping"
    alone = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE), (GuestAddress(PAGE), PAGE)],
                                        one_mapping=False)
    assert alone.regions()[0].mapping.mapping is not alone.regions()[1].mapping.mapping


def test_window_sizes_are_checked_before_anything_is_mapped() -> None:
    with pytest.raises(InvalidArgumentType):
        MmapRegion.anonymous_windows([PAGE, "4096"])  # type: ignore[list-item]
    with pytest.raises(InvalidRange):
        MmapRegion.anonymous_windows([PAGE, 0])
    assert MmapRegion.anonymous_windows([]) == []


def _fresh() -> tuple[GuestMemoryMmap, GuestRegionMmap, GuestRegionMmap]:
    """Two regions far apart in guest space whose windows are neighbours on the host,
    filled through the mappings (so no access has warmed the memory object yet)."""
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(LOW), PAGE),
                                          (GuestAddress(HIGH), PAGE)], one_mapping=True)
    low, high = memory.regions()
    assert high.mapping.host_address == low.mapping.host_address + PAGE, "host neighbours"
    low.mapping.view[:] = OWN
    high.mapping.view[:] = NEIGHBOUR
    return memory, low, high


def _u(ctype: Any, address: int) -> AlignedGuestAddress[Any]:
    return AlignedGuestAddress.new(ctype, GuestAddress(address))


REFUSED: Final[dict[str, Callable[[GuestMemoryMmap], object]]] = {
    "read_obj_unaligned": lambda m: m.read_obj_unaligned(GuestAddress(EDGE - 4),
                                                         ctypes.c_uint64),
    "read_slice": lambda m: m.read_slice(GuestAddress(EDGE - 4), bytearray(8)),
    "read_bytes": lambda m: m.read_bytes(GuestAddress(EDGE - 4), 8),
    "write_slice": lambda m: m.write_slice(GuestAddress(EDGE - 4), b"\x22" * 8),
    "read_obj": lambda m: m.read_obj(_u(ctypes.c_uint32, EDGE)),
    "write_obj": lambda m: m.write_obj(_u(ctypes.c_uint32, EDGE), 0x22222222),
    "get_slice": lambda m: m.get_slice(GuestAddress(EDGE - 4), 8),
}
ATOMIC_REFUSED: Final[dict[str, Callable[[GuestMemoryMmap], object]]] = {
    "read_atomic": lambda m: m.read_atomic(_u(ctypes.c_uint64, EDGE)),
    "write_atomic": lambda m: m.write_atomic(_u(ctypes.c_uint64, EDGE), 0x22),
    "fetch_add": lambda m: m.fetch_add(_u(ctypes.c_uint64, EDGE), 1),
    "compare_exchange": lambda m: m.compare_exchange(_u(ctypes.c_uint64, EDGE), 0, 1),
}


def _warm(memory: GuestMemoryMmap) -> None:
    """Make the low region the one the fast paths remember, with its typed views made."""
    assert memory.read_obj(_u(ctypes.c_uint32, EDGE - 4)) == 0x11111111
    assert memory.read_obj(_u(ctypes.c_uint64, EDGE - 8)) == 0x1111111111111111


def _refused_at_the_edge(action: Callable[[GuestMemoryMmap], object], warm: bool) -> None:
    memory, low, high = _fresh()
    if warm:
        _warm(memory)
    with pytest.raises(GuestMemoryError):
        action(memory)
    assert bytes(high.mapping.view) == NEIGHBOUR, "the neighbour's bytes were reached"
    assert bytes(low.mapping.view) == OWN, "a refused access changed the region"


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize("operation", sorted(REFUSED))
def test_an_access_past_a_windows_end_is_refused(operation: str, warm: bool) -> None:
    _refused_at_the_edge(REFUSED[operation], warm)


@needs_8_byte_atomics
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize("operation", sorted(ATOMIC_REFUSED))
def test_an_atomic_past_a_windows_end_is_refused(operation: str, warm: bool) -> None:
    _refused_at_the_edge(ATOMIC_REFUSED[operation], warm)


@needs_8_byte_atomics
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_accesses_at_a_windows_last_bytes_stay_inside(warm: bool) -> None:
    """The last word is reachable; a partial read or write stops at the region's end."""
    memory, low, high = _fresh()
    if warm:
        _warm(memory)
    memory.write_atomic(_u(ctypes.c_uint64, EDGE - 8), 0x2222222222222222)
    assert memory.fetch_add(_u(ctypes.c_uint64, EDGE - 8), 0x11) == 0x2222222222222222
    memory.write_obj(_u(ctypes.c_uint32, EDGE - 4), 0x44444444)
    buffer = bytearray(b"\x99" * 8)
    assert memory.read(GuestAddress(EDGE - 4), buffer) == 4
    assert bytes(buffer) == b"\x44" * 4 + b"\x99" * 4
    assert memory.write(GuestAddress(EDGE - 2), b"\x55" * 8) == 2
    # The u64's first four bytes in host order, then the u32's two left, then the 0x55s.
    added = (0x2222222222222233).to_bytes(8, sys.byteorder)
    assert bytes(low.mapping.view[-8:]) == added[:4] + b"\x44\x44\x55\x55"
    assert bytes(high.mapping.view) == NEIGHBOUR, "the neighbour's bytes were reached"


def test_control_the_neighbour_check_sees_a_write_to_the_neighbour() -> None:
    memory, _, high = _fresh()
    memory.write_slice(GuestAddress(HIGH), b"\x22")
    assert bytes(high.mapping.view) != NEIGHBOUR


@needs_8_byte_atomics
def test_a_window_closes_only_when_no_memory_holds_any_sibling() -> None:
    """Closing a removed region is refused while a memory holds a sibling (the whole
    mapping would go), the sibling keeps working; once nothing holds any, the close
    unmaps the mapping and every window is closed."""
    results = run_child('''
        memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE),
                                              (GuestAddress(0x10000), PAGE)], one_mapping=True)
        smaller, removed = memory.remove_region(GuestAddress(0x10000), PAGE)
        del memory
        gc.collect()
        kept = smaller.regions()[0]
        smaller.write_atomic(u64(8), 7)
        results["refused"] = outcome(removed.close)
        results["kept_open"] = not kept.closed and not removed.closed
        results["after"] = outcome(lambda: smaller.read_atomic(u64(8)))
        results["sibling_close"] = outcome(kept.close)
        del smaller
        gc.collect()
        results["control"] = outcome(removed.close)
        results["all_closed"] = [kept.closed, removed.closed, kept.mapping.mapping.closed]
        results["reuse"] = outcome(lambda: GuestMemoryMmap([kept]).read_bytes(
            GuestAddress(0), 4))
    ''')
    assert results["refused"]["raised"] == "RegionInUse"
    assert results["kept_open"] is True
    assert results["after"] == {"value": 7}
    assert results["sibling_close"]["raised"] == "RegionInUse"
    assert results["control"] == {"value": None}, "the close happens once nothing holds them"
    assert results["all_closed"] == [True, True, True]
    assert results["reuse"]["raised"] == "MappingError"


def test_a_window_close_is_refused_while_a_buffer_of_a_sibling_is_exported() -> None:
    """An exported buffer pins the whole mapping: the close is refused, nothing is
    released (every window still works), and it succeeds once the buffer is gone."""
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE),
                                          (GuestAddress(0x10000), PAGE)], one_mapping=True)
    first, second = memory.regions()
    exported = memory.get_slice(GuestAddress(0x10000), 16).as_memoryview()
    del memory
    with pytest.raises(RegionInUse) as raised:
        first.close()
    assert raised.value.exported_buffers
    again = GuestMemoryMmap([first, second])
    again.write_slice(GuestAddress(0x10000), b"\x77" * 4)
    assert bytes(exported[:4]) == b"\x77" * 4
    assert bytes(first.mapping.view[:4]) == bytes(4) and len(second.mapping.view) == PAGE
    del again
    exported.release()
    first.close()
    assert first.closed and second.closed and first.mapping.mapping.closed


def test_ranges_that_cannot_be_placed_unmap_the_shared_mapping_at_once() -> None:
    """Overlapping ranges are refused; the mapping made for them is unmapped at once."""
    windows: list[MmapRegion] = []
    original = cut_anonymous_windows

    def spy(sizes: list[int], *, shared: bool = False
            ) -> tuple[list[MmapRegion], CutFields | None]:
        cut, fields = original(sizes, shared=shared)
        windows.extend(cut)
        return cut, fields

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mmap_memory, "cut_anonymous_windows", spy)  # what from_ranges calls
        with pytest.raises(GuestMemoryError):
            GuestMemoryMmap.from_ranges([(GuestAddress(0), 2 * PAGE),
                                         (GuestAddress(PAGE), PAGE)], one_mapping=True)
    assert len(windows) == 2 and all(window.closed for window in windows)
