"""The pure path's page hits: a switch between regions costs one dict probe and one
comparison, and admits nothing a cold call refuses.

On the pure path each memory object remembers, page by page, the region a lookup found
when it covers the whole page (`GuestMemory._page_hits`, at most `_PAGE_HITS_MAX` pages):
a fast path whose last region hit misses probes it, then needs only the region's upper
limit, since the region starts at or below the page. A page no region covers whole is
remembered as `_NO_REGION` (whose limits admit nothing), so its next probe is a hit too.
These tests run on the pure path (a child with `VM_MEMORY_PURE=1`, whichever path this
session runs): calls alternating over one-page, multi-page, read-only and sub-page
regions and the gaps between them, round after round with the map held small so it
fills and starts afresh, answer exactly as the same call on a fresh memory object
(cold); every remembered page is covered by its region, or by none where it is
remembered as none; a hot-plug change starts a new map; a region that starts tracking
dirty pages while remembered has its stores marked. The control remembers regions that
do not cover their page and shows the comparison then fails. The calls use the widest
atomic this host does (8 bytes, or 4 where 8 are refused).
"""

from __future__ import annotations

import json
import signal
import subprocess
from typing import Any, Final

from host_assumptions import WIDE_ATOMIC_NAME
from support import run_python_code

PROGRAM: Final = """
import ctypes, json, os
from vm_memory import (AlignedGuestAddress, GuestAddress, GuestMemory, GuestMemoryError,
                       GuestMemoryMmap, GuestRegionMmap, MmapRegion, access_path)
from vm_memory import guest_memory

assert access_path().name == "pure"
BREAK = {broken}
PAGE = 0x1000
BASE = 0x10_0000
guest_memory._PAGE_HITS_MAX = 3  # fill it and start afresh again and again

if BREAK:  # the control: remember any region found, covering its page or not
    def careless(self, value):
        region = self._region_at(value)
        self._page_hits[value >> 12] = region
        return region
    guest_memory.GuestMemory._page_region = careless

def region_at(start, length, mark):
    made = GuestMemoryMmap.from_ranges([(GuestAddress(start), length)]).regions()[0]
    made.buffer[:] = bytes([mark]) * length
    return made

def read_only_at(start, mark):
    fd = os.memfd_create("page-hits")
    try:
        os.write(fd, bytes([mark]) * PAGE)
        return GuestRegionMmap(MmapRegion.from_file(fd, PAGE, read_only=True),
                               GuestAddress(start))
    finally:
        os.close(fd)

regions = [region_at(BASE, PAGE, 1), region_at(BASE + 2 * PAGE, 3 * PAGE, 2),
           read_only_at(BASE + 6 * PAGE, 3)]
sub_page = BASE + 8 * PAGE  # four regions on one page, gaps between them
regions += [region_at(sub_page + offset, 0x100, 4 + number)
            for number, offset in enumerate((0x100, 0x400, 0x800, 0xC00))]
starts = [BASE + 0x40, BASE + 2 * PAGE + 0x40, BASE + 4 * PAGE + 0xFF8, BASE + 6 * PAGE + 8,
          sub_page + 0x140, sub_page + 0x440, sub_page + 0x840, sub_page + 0xC40,
          sub_page + 0x40, sub_page + 0x540, BASE + PAGE + 0x40, BASE + 5 * PAGE]

def calls(memory, value):
    typed = AlignedGuestAddress.new(ctypes.{wide}, GuestAddress(value))
    plain = GuestAddress(value + 1)
    return [("read_obj", lambda: memory.read_obj(typed)),
            ("write_obj", lambda: memory.write_obj(typed, value & 0xFF)),
            ("read_obj_unaligned", lambda: memory.read_obj_unaligned(plain, ctypes.c_uint32)),
            ("read_atomic", lambda: memory.read_atomic(typed)),
            ("write_atomic", lambda: memory.write_atomic(typed, value & 0xFF)),
            ("fetch_add", lambda: memory.fetch_add(typed, 0)),
            ("compare_exchange", lambda: memory.compare_exchange(typed, 1, 1)),
            ("read_slice", lambda: memory.read_slice(plain, bytearray(4))),
            ("write_slice", lambda: memory.write_slice(plain, b"\\x09\\x09")),
            ("read_bytes", lambda: memory.read_bytes(plain, 4))]

def outcome(action):
    try:
        return ["ok", repr(action())]
    except GuestMemoryError as error:
        return [type(error).__name__, str(error)]
    except Exception as error:  # never right: a cold call raises none of these
        return ["untyped " + type(error).__name__, str(error)]

def covers(region, page):
    return region.start_value <= page << 12 and (page + 1) << 12 <= region.end_value

def uncovered(memory):  # remembered with a region not covering them, or as none wrongly
    wrong = []
    for page, region in memory._page_hits.items():
        if region is guest_memory._NO_REGION:
            if any(covers(other, page) for other in memory.regions()):
                wrong.append(hex(page) + " remembered as none")
        elif not (memory.holds(region) and covers(region, page)):
            wrong.append(hex(page))
    return wrong

warm = GuestMemory(regions)
mismatches, wrong_pages, checked, remembered, none_pages = [], [], 0, set(), set()
for round_ in range(3):
    for number in range(len(calls(warm, BASE))):
        for value in starts:  # each call alternates over every region and gap
            name, cold_call = calls(GuestMemory(regions), value)[number]
            cold = outcome(cold_call)
            ours = outcome(calls(warm, value)[number][1])
            checked += 1
            if ours != cold:
                mismatches.append([name, hex(value), round_, ours, cold])
            remembered.update(page for page, region in warm._page_hits.items()
                              if region is not guest_memory._NO_REGION)
            none_pages.update(page for page, region in warm._page_hits.items()
                              if region is guest_memory._NO_REGION)
            wrong_pages += uncovered(warm)
            if len(warm._page_hits) > 3:
                wrong_pages.append("over the limit")

bigger = warm.insert_region(region_at(BASE + 12 * PAGE, PAGE, 9))
fresh_map = bigger._page_hits == {{}}
bigger_ok = [outcome(calls(bigger, value)[0][1]) for value in starts + [BASE + 12 * PAGE]] \\
    == [outcome(calls(GuestMemory(bigger.regions()), value)[0][1])
        for value in starts + [BASE + 12 * PAGE]]

tracked = regions[0]
dirty = tracked.track_dirty_pages(PAGE)
for value in starts[:2] * 2:  # the tracked region is remembered, then stored to
    warm.write_obj(AlignedGuestAddress.new(ctypes.{wide}, GuestAddress(value)), 5)
    warm.fetch_add(AlignedGuestAddress.new(ctypes.{wide}, GuestAddress(value + 8)), 1)
marked = [hex(address.raw_value()) for address in warm.dirty_pages()]
print(json.dumps({{"checked": checked, "mismatches": mismatches, "wrong_pages": wrong_pages,
                  "remembered": len(remembered), "none_pages": sorted(none_pages),
                  "fresh_map": fresh_map,
                  "bigger_ok": bigger_ok, "marked": marked}}))
"""


def run(broken: bool) -> subprocess.CompletedProcess[str]:
    return run_python_code(PROGRAM.format(broken=broken, wide=WIDE_ATOMIC_NAME),
                           environment={"VM_MEMORY_PURE": "1"})


def test_alternating_through_page_hits_answers_as_cold_calls() -> None:
    """Ten methods alternating over twelve addresses (one-page, multi-page, read-only and
    sub-page regions, the gaps between them), three rounds, the map limited to three
    pages: every result and refusal as a cold call's; only covered pages remembered; a
    hot-plug change starts a new map; stores to a region remembered before it started
    tracking dirty pages mark its page."""
    result = run(broken=False)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    assert answer["checked"] == 3 * 10 * 12
    assert answer["mismatches"] == [], answer["mismatches"][:5]
    assert answer["wrong_pages"] == [], answer["wrong_pages"][:5]
    assert answer["remembered"] >= 4, answer  # the whole-page regions' pages were used
    # the sub-page regions' page and the gap pages: remembered as having no region
    assert answer["none_pages"] == [0x101, 0x105, 0x108], answer["none_pages"]
    assert answer["fresh_map"] and answer["bigger_ok"], answer
    assert answer["marked"] == [hex(0x10_0000)], answer["marked"]


def test_control_remembering_uncovered_pages_is_caught() -> None:
    """The control: a map that remembers a sub-page region for its page lets an address
    below that region through on the upper limit alone: a typed read then indexes the
    wrong place and an atomic reaches host memory outside the mapping (the child dies
    of SIGSEGV, which is why it is a child); the comparison, or the crash, shows it."""
    result = run(broken=True)
    if result.returncode == -signal.SIGSEGV:
        return
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    assert answer["wrong_pages"], "the page check cannot see an uncovered page"
    assert answer["mismatches"], "the comparison cannot see a wrongly admitted address"
