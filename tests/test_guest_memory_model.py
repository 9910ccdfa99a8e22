"""Every access path of `GuestMemory` against the reference model, on random layouts.

A layout has 1 to 64 regions of 1 byte to 4 pages, with gaps from none (adjacent
regions) to 2**57 bytes, placed anywhere in the 64-bit space: often starting at 0 and
often ending exactly at 2**64 - 1. Regions are anonymous private or shared mappings,
sealed memfds, and read-only file mappings at a file offset, filled with random bytes.
Addresses are drawn at 0, region edges, inside regions, in holes and near 2**64.

For each operation the library's result, or the error it raises (class and facts),
must equal the model's; after it, every region's real bytes must equal the model's,
and a failed operation must have changed no byte anywhere. The real bytes are read
straight from the mmaps, never through the library.

Mappings come from a pool and are reused across examples: only the guest addresses are
random and high, the host memory is a few pages per region.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Callable, Generator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_model import (
    ADDRESS_LIMIT,
    ExpectedError,
    MemoryModel,
    ModelRegion,
    decode,
    integer_bounds,
    is_scalar,
    natural_alignment,
    same_value,
)

from vm_memory import (
    AlignedGuestAddress,
    Be16,
    Be32,
    Be64,
    BeI16,
    BeI64,
    GuestAddress,
    GuestMemory,
    GuestMemoryError,
    GuestMemoryMmap,
    GuestRegionMmap,
    InvalidGuestAddress,
    Le16,
    Le32,
    LeI32,
    MemoryRegionAddress,
    MmapRegion,
)

PAGE: Final = mmap.PAGESIZE
MAX_REGION_SIZE: Final = 4 * PAGE
MAX_LENGTH: Final = 64 * MAX_REGION_SIZE + PAGE
"""Longest access drawn: enough to cross every region of the largest layout."""
FILLER: Final = 0xA5
"""What a destination buffer holds before a read; a failed read must leave it so."""

_R = TypeVar("_R")


# ---- Typed values -------------------------------------------------------------------


class Header(ctypes.Structure):
    """A small device-style structure with padding and a big-endian field."""

    _fields_ = (("kind", ctypes.c_uint8), ("length", ctypes.c_uint32), ("flags", Be16))


class PackedRecord(ctypes.Structure):
    """A packed structure: alignment 1, odd size."""

    _pack_ = 1
    _fields_ = (("tag", ctypes.c_uint8), ("value", Le32), ("check", ctypes.c_int16))


Triple = ctypes.c_uint16 * 3

OBJECT_TYPES: Final[tuple[type[Any], ...]] = (
    ctypes.c_uint8, ctypes.c_int8, ctypes.c_uint16, ctypes.c_int16, ctypes.c_uint32,
    ctypes.c_int32, ctypes.c_uint64, ctypes.c_int64, ctypes.c_long, ctypes.c_size_t,
    Le16, Le32, LeI32, Be16, Be32, Be64, BeI16, BeI64,
    ctypes.c_float, ctypes.c_double, ctypes.c_bool, ctypes.c_char,
    Header, PackedRecord, Triple,
)


object_types: st.SearchStrategy[type[Any]] = st.sampled_from(OBJECT_TYPES)


def values_of(ctype: type[Any]) -> st.SearchStrategy[Any]:
    """Valid values of `ctype`: in range for integers, any bit pattern for aggregates."""
    if not is_scalar(ctype):
        return st.binary(min_size=ctypes.sizeof(ctype), max_size=ctypes.sizeof(ctype)).map(
            ctype.from_buffer_copy)
    if ctype is ctypes.c_bool:
        return st.one_of(st.booleans(), st.sampled_from([0, 1]))
    if ctype is ctypes.c_char:
        return st.binary(min_size=1, max_size=1)
    if ctype is ctypes.c_float:
        return st.floats(width=32)
    if ctype is ctypes.c_double:
        return st.floats()
    low, high = integer_bounds(ctype)
    return st.one_of(st.integers(low, high), st.sampled_from([low, high, 0]))


VALUES: Final = {ctype: values_of(ctype) for ctype in OBJECT_TYPES}
"""The value strategy of each type, built once (building them per operation is slow)."""


# ---- Reused mappings ----------------------------------------------------------------

WRITABLE_KINDS: Final = ("anonymous", "anonymous", "shared", "memfd")
"""Writable region kinds drawn for a layout (anonymous private ones more often); the
share of read-only file mappings is drawn per layout."""


class ReadOnlyBacking:
    """One temporary file whose slots back the read-only mappings.

    A slot is reused once the mapping on it is gone (a new temporary file per mapping
    would cost more than the rest of an example).
    """

    SLOT: Final = MAX_REGION_SIZE

    def __init__(self) -> None:
        self._file: Any = None
        self._free_slots: list[int] = []
        self._slot_count = 0

    def map(self, size: int) -> MmapRegion:
        """A read-only mapping of `size` bytes of its own slot of the file."""
        if self._file is None:
            # Kept open for the whole run: it backs mappings across examples.
            self._file = tempfile.TemporaryFile()  # noqa: SIM115
        if self._free_slots:
            slot = self._free_slots.pop()
        else:
            slot = self._slot_count
            self._slot_count += 1
            os.ftruncate(self._file.fileno(), self._slot_count * self.SLOT)
        mapping = MmapRegion.from_file(self._file.fileno(), size, offset=slot * self.SLOT,
                                       read_only=True)
        weakref.finalize(mapping, self._free_slots.append, slot)
        return mapping


READ_ONLY_BACKING = ReadOnlyBacking()


def _create_mapping(size: int, kind: str) -> MmapRegion:
    if kind == "anonymous":
        return MmapRegion.anonymous(size)
    if kind == "shared":
        return MmapRegion.anonymous(size, shared=True)
    if kind == "memfd":
        return MmapRegion.memfd(size)
    return READ_ONLY_BACKING.map(size)


class MappingPool:
    """Free mappings by (size, kind), reused across examples; the oldest sizes go first."""

    def __init__(self, capacity: int) -> None:
        self._free: OrderedDict[tuple[int, str], list[MmapRegion]] = OrderedDict()
        self._count = 0
        self._capacity = capacity

    def take(self, size: int, kind: str) -> MmapRegion:
        """A mapping of exactly `size` bytes of that kind, reused or new."""
        free = self._free.get((size, kind))
        if not free:
            return _create_mapping(size, kind)
        self._count -= 1
        return free.pop()

    def give_back(self, mappings: list[tuple[str, MmapRegion]]) -> None:
        """Return mappings for later examples, dropping the least recently used sizes."""
        for kind, mapping in mappings:
            key = (mapping.size, kind)
            self._free.setdefault(key, []).append(mapping)
            self._free.move_to_end(key)
            self._count += 1
        while self._count > self._capacity:
            _, dropped = self._free.popitem(last=False)
            self._count -= len(dropped)


POOL = MappingPool(capacity=1500)


def _fill(mapping: MmapRegion, content: bytes) -> None:
    """Set a mapping's bytes without going through the library."""
    if mapping.read_only:
        assert mapping.fd is not None
        assert os.pwrite(mapping.fd, content, mapping.file_offset) == len(content)
    else:
        mapping.mapping[:] = content


# ---- Layouts ------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionSpec:
    """Where one region goes, how big it is, and what backs it."""

    start: int
    size: int
    kind: str


@dataclass(frozen=True)
class LayoutSpec:
    """A drawn layout; `shuffle_seed` orders the regions given to the constructor."""

    regions: tuple[RegionSpec, ...]
    as_mmap_memory: bool
    shuffle_seed: int
    content_seed: int


SIZE_PROFILES: Final = ("tiny", "pages", "mixed")
GAP_PROFILES: Final = ("adjacent", "small", "mixed", "huge")
PLACEMENTS: Final = ("at zero", "ending at the top", "near the top", "anywhere")


def _region_size(rng: random.Random, profile: str) -> int:
    if profile == "tiny" or (profile == "mixed" and rng.random() < 0.3):
        return rng.randint(1, 16)
    if rng.random() < 0.3:
        return rng.choice((PAGE - 1, PAGE, PAGE + 1, 2 * PAGE, MAX_REGION_SIZE))
    return rng.randint(1, MAX_REGION_SIZE)


def _gap_size(rng: random.Random, profile: str) -> int:
    if profile == "adjacent":
        return 0
    if profile == "small":
        return rng.choice((0, rng.randint(1, 16), rng.randint(1, 2 * PAGE)))
    if profile == "huge":
        return rng.randint(1, 1 << 57)
    return rng.choice((0, rng.randint(1, 16), rng.randint(1, 2 * PAGE),
                       rng.randint(1, 1 << 57)))


@st.composite
def layouts(draw: st.DrawFn) -> LayoutSpec:
    """1 to 64 regions with gaps, starting at 0, ending at 2**64 - 1, or anywhere.

    Hypothesis draws the shape (region count, size and gap profiles, placement); the
    individual sizes and gaps come from a drawn seed, because hundreds of separate
    draws per layout would make 10,000 examples per path take hours.
    """
    count = draw(st.integers(1, 64))
    size_profile = draw(st.sampled_from(SIZE_PROFILES))
    gap_profile = draw(st.sampled_from(GAP_PROFILES))
    placement = draw(st.sampled_from(PLACEMENTS))
    read_only_share = draw(st.sampled_from((0.0, 0.2, 0.5, 1.0)))
    rng = random.Random(draw(st.integers(0, 2**64 - 1)))
    sizes = [_region_size(rng, size_profile) for _ in range(count)]
    gaps = [_gap_size(rng, gap_profile) for _ in range(count - 1)]
    kinds = ["read-only-file" if rng.random() < read_only_share else rng.choice(WRITABLE_KINDS)
             for _ in range(count)]
    room = ADDRESS_LIMIT - (sum(sizes) + sum(gaps))
    if placement == "at zero":
        base = 0
    elif placement == "ending at the top":
        base = room
    elif placement == "near the top":
        base = rng.randint(max(0, room - 4 * PAGE), room)
    else:
        base = rng.randint(0, room)
    regions: list[RegionSpec] = []
    start = base
    for index, size in enumerate(sizes):
        regions.append(RegionSpec(start, size, kinds[index]))
        start += size + (gaps[index] if index < len(gaps) else 0)
    return LayoutSpec(tuple(regions), draw(st.booleans()), rng.getrandbits(32),
                      rng.getrandbits(32))


@dataclass
class Case:
    """One built layout: the library's memory, the model, the regions by start."""

    memory: GuestMemory
    model: MemoryModel
    regions: list[GuestRegionMmap]

    def differing_regions(self) -> list[int]:
        """Indexes of regions whose real bytes (read from the mmap itself, not through
        the library) differ from the model's."""
        return [index for index, (region, model_region)
                in enumerate(zip(self.regions, self.model, strict=True))
                if not same_bytes(bytes(region.mapping.view), model_region.data)]


def same_bytes(first: bytes | bytearray, second: bytes | bytearray) -> bool:
    """Byte-wise equality of a bytes and a bytearray."""
    return first == second


@contextmanager
def built(layout: LayoutSpec) -> Generator[Case, None, None]:
    """The layout as real memory and as a model, with the same random content."""
    taken: list[tuple[str, MmapRegion]] = []
    try:
        content = random.Random(layout.content_seed)
        model_regions: list[ModelRegion] = []
        guest_regions: list[GuestRegionMmap] = []
        for spec in layout.regions:
            mapping = POOL.take(spec.size, spec.kind)
            taken.append((spec.kind, mapping))
            data = content.randbytes(spec.size)
            _fill(mapping, data)
            model_regions.append(ModelRegion(spec.start, bytearray(data), mapping.read_only))
            guest_regions.append(GuestRegionMmap(mapping, GuestAddress(spec.start)))
        given_order = list(guest_regions)
        random.Random(layout.shuffle_seed).shuffle(given_order)
        memory = (GuestMemoryMmap.from_regions(given_order) if layout.as_mmap_memory
                  else GuestMemory(given_order))
        case = Case(memory, MemoryModel(model_regions), guest_regions)
        assert case.differing_regions() == []
        yield case
    finally:
        POOL.give_back(taken)


# ---- Drawing operations --------------------------------------------------------------


ADDRESS_KINDS: Final = ("edge", "inside", "hole", "anywhere", "special", "near the top")
_address_kind = st.sampled_from(ADDRESS_KINDS)
_any_u64 = st.integers(0, ADDRESS_LIMIT - 1)
_edge_delta = st.integers(-2, 1)
_SPECIAL_ADDRESSES: Final = (0, 1, ADDRESS_LIMIT - 1, ADDRESS_LIMIT - 2, ADDRESS_LIMIT - 8)
LENGTH_KINDS: Final = ("short", "pages", "to the hole", "to the top")
_length_kind = st.sampled_from(LENGTH_KINDS)
_length_pick = st.integers(0, MAX_LENGTH)
_near_delta = st.integers(-3, 3)


def _holes(model: MemoryModel) -> list[tuple[int, int]]:
    """The unbacked ranges [first, last], from 0 to 2**64 - 1."""
    holes: list[tuple[int, int]] = []
    previous_end = 0
    for region in model:
        if region.start > previous_end:
            holes.append((previous_end, region.start - 1))
        previous_end = region.end
    if previous_end < ADDRESS_LIMIT:
        holes.append((previous_end, ADDRESS_LIMIT - 1))
    return holes


def draw_address(data: st.DataObject, model: MemoryModel) -> int:
    """0, region edges and their neighbours, region insides, holes, and the top.

    Drawn as (kind, number) from fixed strategies: building strategies per operation
    would cost more than the operation itself.
    """
    kind = data.draw(_address_kind)
    pick = data.draw(_any_u64)
    regions = model.regions
    if kind == "edge":
        region = regions[pick % len(regions)]
        edge = region.end if pick // len(regions) % 2 else region.start
        return min(max(edge + data.draw(_edge_delta), 0), ADDRESS_LIMIT - 1)
    if kind == "inside":
        region = regions[pick % len(regions)]
        return region.start + pick // len(regions) % len(region.data)
    if kind == "hole":
        holes = _holes(model)
        if holes:
            first, last = holes[pick % len(holes)]
            return first + pick // len(holes) % (last - first + 1)
    if kind == "special":
        return _SPECIAL_ADDRESSES[pick % len(_SPECIAL_ADDRESSES)]
    if kind == "near the top":
        return ADDRESS_LIMIT - 1 - pick % (4 * PAGE)
    return pick


def draw_length(data: st.DataObject, model: MemoryModel, address: int) -> int:
    """Short, up to 3 pages, up to the next hole (give or take), and up to 2**64."""
    kind = data.draw(_length_kind)
    pick = data.draw(_length_pick)
    if kind == "short":
        return pick % 17
    if kind == "pages":
        return pick % (3 * PAGE + 1)
    if kind == "to the hole":
        end = model.backed_bytes(address, MAX_LENGTH)
    else:
        end = ADDRESS_LIMIT - address
        if end > MAX_LENGTH:
            end = model.backed_bytes(address, MAX_LENGTH)
    return min(max(end + data.draw(_near_delta), 0), MAX_LENGTH)


def random_bytes(data: st.DataObject, length: int) -> bytes:
    """`length` random bytes (from a drawn seed: drawing large binaries is slow)."""
    return random.Random(data.draw(st.integers(0, 2**32))).randbytes(length)


def agree(case: Case, model_call: Callable[[], _R],
          library_call: Callable[[], object]) -> tuple[_R, Any] | None:
    """Run one operation on the model and the library and check that they agree.

    Returns (model result, library result) on success; None when both failed alike,
    after checking the error's class and facts and that no byte of memory changed (the
    model changes nothing on failure, and matched the real memory before the call).
    """
    try:
        expected = model_call()
    except ExpectedError as expected_error:
        with pytest.raises(GuestMemoryError) as raised:
            library_call()
        error = raised.value
        assert type(error) is expected_error.error_type, (error, expected_error)
        for name, value in expected_error.facts.items():
            assert getattr(error, name) == value, (name, error, expected_error)
        assert case.differing_regions() == [], "a failed access changed memory"
        return None
    actual = library_call()
    assert case.differing_regions() == []
    return expected, actual


def maybe_view(data: st.DataObject, buffer: bytearray) -> bytearray | memoryview:
    """The buffer itself or a memoryview of it: both are accepted."""
    return memoryview(buffer) if data.draw(st.booleans()) else buffer


# ---- The paths ----------------------------------------------------------------------


def path_read(case: Case, data: st.DataObject) -> None:
    address = draw_address(data, case.model)
    length = draw_length(data, case.model, address)
    buffer = bytearray([FILLER]) * length
    result = agree(case, lambda: case.model.read(address, length),
                   lambda: case.memory.read(GuestAddress(address), maybe_view(data, buffer)))
    if result is None:
        assert buffer == bytearray([FILLER]) * length
        return
    expected, count = result
    assert count == len(expected)
    assert buffer[:count] == expected
    assert buffer[count:] == bytearray([FILLER]) * (length - count)


def path_write(case: Case, data: st.DataObject) -> None:
    address = draw_address(data, case.model)
    payload = random_bytes(data, draw_length(data, case.model, address))
    source: bytes | memoryview = memoryview(payload) if data.draw(st.booleans()) else payload
    result = agree(case, lambda: case.model.write(address, payload),
                   lambda: case.memory.write(GuestAddress(address), source))
    if result is not None:
        assert result[1] == result[0]


def path_read_slice(case: Case, data: st.DataObject) -> None:
    address = draw_address(data, case.model)
    length = draw_length(data, case.model, address)
    buffer = bytearray([FILLER]) * length
    result = agree(case, lambda: case.model.read_slice(address, length),
                   lambda: case.memory.read_slice(GuestAddress(address),
                                                  maybe_view(data, buffer)))
    if result is None:
        assert buffer == bytearray([FILLER]) * length, "a failed read_slice copied bytes"
    else:
        assert result[1] is None
        assert buffer == result[0]


def path_write_slice(case: Case, data: st.DataObject) -> None:
    address = draw_address(data, case.model)
    payload = random_bytes(data, draw_length(data, case.model, address))
    result = agree(case, lambda: case.model.write_slice(address, payload),
                   lambda: case.memory.write_slice(GuestAddress(address), payload))
    if result is not None:
        assert result[1] is None


def path_read_bytes(case: Case, data: st.DataObject) -> None:
    address = draw_address(data, case.model)
    length = draw_length(data, case.model, address)
    result = agree(case, lambda: case.model.read_slice(address, length),
                   lambda: case.memory.read_bytes(GuestAddress(address), length))
    if result is not None:
        assert type(result[1]) is bytes
        assert result[1] == result[0]


def path_read_obj_unaligned(case: Case, data: st.DataObject) -> None:
    ctype = data.draw(object_types)
    address = draw_address(data, case.model)
    result = agree(case, lambda: decode(ctype, case.model.read_obj_unaligned(address, ctype)),
                   lambda: case.memory.read_obj_unaligned(GuestAddress(address), ctype))
    if result is not None:
        assert same_value(result[1], result[0]), result


def path_write_obj_unaligned(case: Case, data: st.DataObject) -> None:
    ctype = data.draw(object_types)
    address = draw_address(data, case.model)
    value = data.draw(VALUES[ctype])
    result = agree(case, lambda: case.model.write_obj_unaligned(address, ctype, value),
                   lambda: case.memory.write_obj_unaligned(GuestAddress(address), ctype, value))
    if result is not None:
        assert result[1] is None


def _aligned_address(case: Case, data: st.DataObject, ctype: type[Any]) -> int:
    address = draw_address(data, case.model)
    return address - address % natural_alignment(ctype)


def path_read_obj(case: Case, data: st.DataObject) -> None:
    ctype = data.draw(object_types)
    address = _aligned_address(case, data, ctype)
    aligned = AlignedGuestAddress.new(ctype, GuestAddress(address))
    assert aligned.raw_value() == address
    result = agree(case, lambda: decode(ctype, case.model.read_obj(address, ctype)),
                   lambda: case.memory.read_obj(aligned))
    if result is not None:
        assert same_value(result[1], result[0]), result


def path_write_obj(case: Case, data: st.DataObject) -> None:
    ctype = data.draw(object_types)
    address = _aligned_address(case, data, ctype)
    aligned = AlignedGuestAddress.new(ctype, GuestAddress(address))
    value = data.draw(VALUES[ctype])
    result = agree(case, lambda: case.model.write_obj(address, ctype, value),
                   lambda: case.memory.write_obj(aligned, value))
    if result is not None:
        assert result[1] is None


_process_memory: list[int] = []
"""The fd of /proc/self/mem, opened on first use and kept (one per process)."""


def _host_bytes(host_address: int, count: int) -> bytes:
    """Bytes at a host address, read through /proc/self/mem: a wrong address gives an
    error instead of crashing the interpreter. Under qemu-user, /proc/self/mem is the
    emulator's, not at the program's addresses (checked on a known buffer): there the
    bytes are read with ctypes, at an address the caller has already checked."""
    if not _process_memory:
        _process_memory.append(os.open("/proc/self/mem", os.O_RDONLY | os.O_CLOEXEC))
        known = ctypes.create_string_buffer(b"known bytes")
        try:
            seen = os.pread(_process_memory[0], 11, ctypes.addressof(known))
        except OSError:
            seen = b""
        if seen != known.value:
            os.close(_process_memory[0])
            _process_memory[0] = -1
    if _process_memory[0] < 0:
        return ctypes.string_at(host_address, count)
    return os.pread(_process_memory[0], count, host_address)


def path_lookups(case: Case, data: st.DataObject) -> None:
    """find_region, address_in_range, check_address, to_region_addr, get_host_address.

    At a drawn address, and at both sides of every region edge (off-by-one bugs there
    would otherwise need a lucky draw).
    """
    for region_model in case.model:
        for edge in (region_model.start - 1, region_model.start, region_model.end - 1,
                     region_model.end):
            if 0 <= edge < ADDRESS_LIMIT:
                _check_lookups(case, edge)
    _check_lookups(case, draw_address(data, case.model))


def _check_lookups(case: Case, address: int) -> None:
    guest = GuestAddress(address)
    index = case.model.region_index(address)
    memory = case.memory
    if index is None:
        assert memory.find_region(guest) is None
        assert memory.address_in_range(guest) is False
        assert memory.check_address(guest) is None
        assert memory.to_region_addr(guest) is None
        with pytest.raises(InvalidGuestAddress) as raised:
            memory.get_host_address(guest)
        assert raised.value.address == address
        return
    region = case.regions[index]
    offset = address - case.model.regions[index].start
    assert memory.find_region(guest) is region
    assert memory.address_in_range(guest) is True
    assert memory.check_address(guest) == guest
    assert memory.to_region_addr(guest) == (region, MemoryRegionAddress(offset))
    host = memory.get_host_address(guest)
    if not region.read_only:  # an independent host address: ctypes on the mmap itself
        pin = ctypes.c_char.from_buffer(region.mapping.mapping)
        assert host == ctypes.addressof(pin) + offset
        del pin
    model_data = case.model.regions[index].data
    count = min(16, len(model_data) - offset)
    assert _host_bytes(host, count) == model_data[offset:offset + count]


def path_check_range(case: Case, data: st.DataObject) -> None:
    address = draw_address(data, case.model)
    length = draw_length(data, case.model, address)
    assert case.memory.check_range(GuestAddress(address), length) \
        is case.model.check_range(address, length)


def path_layout(case: Case, data: st.DataObject) -> None:
    """num_regions, last_addr and the sorted region order, whatever order was given."""
    memory = case.memory
    assert memory.num_regions() == len(case.model.regions)
    assert memory.last_addr() == GuestAddress(case.model.last_addr())
    assert list(memory.regions()) == case.regions
    assert list(memory) == case.regions
    for region, model_region in zip(case.regions, case.model, strict=True):
        assert region.start == GuestAddress(model_region.start)
        assert region.last_addr == GuestAddress(model_region.end - 1)
        assert region.read_only is model_region.read_only


PATHS: Final[dict[str, Callable[[Case, st.DataObject], None]]] = {
    "read": path_read,
    "write": path_write,
    "read_slice": path_read_slice,
    "write_slice": path_write_slice,
    "read_bytes": path_read_bytes,
    "read_obj_unaligned": path_read_obj_unaligned,
    "write_obj_unaligned": path_write_obj_unaligned,
    "read_obj": path_read_obj,
    "write_obj": path_write_obj,
    "lookups": path_lookups,
    "check_range": path_check_range,
    "layout": path_layout,
}


def run_path(path: str, layout: LayoutSpec, data: st.DataObject) -> None:
    """Build the layout, then run 1 to 4 operations of one path against the model."""
    with built(layout) as case:
        for _ in range(data.draw(st.integers(1, 4), label="operations")):
            PATHS[path](case, data)


def run_every_path(layout: LayoutSpec, data: st.DataObject) -> None:
    """Build the layout, then run every path once, in a drawn order, on the same memory.

    So each example is one example of every path, and writes of one path are read back
    by the others.
    """
    with built(layout) as case:
        for path in data.draw(st.permutations(sorted(PATHS)), label="order"):
            PATHS[path](case, data)


@pytest.mark.parametrize("path", sorted(PATHS))
@settings(max_examples=60)  # each path also runs in every example of the test below
@given(layout=layouts(), data=st.data())
def test_path_agrees_with_model(path: str, layout: LayoutSpec, data: st.DataObject) -> None:
    run_path(path, layout, data)


@given(layout=layouts(), data=st.data())
def test_every_path_agrees_with_model(layout: LayoutSpec, data: st.DataObject) -> None:
    run_every_path(layout, data)


@pytest.mark.long
@settings(settings.get_profile("long"))
@given(layout=layouts(), data=st.data())
def test_every_path_agrees_with_model_long(layout: LayoutSpec, data: st.DataObject) -> None:
    """10,000 examples (the `long` profile), each running every path: 10,000 per path."""
    run_every_path(layout, data)


# ---- Targeted cases the random layouts must not miss -----------------------------------


def test_region_ending_at_top_of_address_space() -> None:
    """Accesses that end exactly at 2**64 - 1 succeed; one byte further is refused."""
    top = GuestAddress(ADDRESS_LIMIT - PAGE)
    memory = GuestMemoryMmap.from_ranges([(top, PAGE)])
    assert memory.last_addr() == GuestAddress(ADDRESS_LIMIT - 1)
    memory.write_slice(GuestAddress(ADDRESS_LIMIT - 4), b"\x01\x02\x03\x04")
    assert memory.read_bytes(GuestAddress(ADDRESS_LIMIT - 4), 4) == b"\x01\x02\x03\x04"
    assert memory.read_obj_unaligned(GuestAddress(ADDRESS_LIMIT - 4), Be32) == 0x01020304
    last = AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(ADDRESS_LIMIT - 8))
    memory.write_obj(last, 2**64 - 1)
    assert memory.read_obj(last) == 2**64 - 1
    assert memory.check_range(GuestAddress(ADDRESS_LIMIT - PAGE), PAGE)
    assert not memory.check_range(GuestAddress(ADDRESS_LIMIT - PAGE), PAGE + 1)


def test_empty_memory() -> None:
    """No regions: nothing is backed, and last_addr has no answer."""
    memory = GuestMemory([])
    assert memory.num_regions() == 0
    with pytest.raises(InvalidGuestAddress):
        memory.last_addr()
    assert memory.find_region(GuestAddress(0)) is None
    assert memory.read(GuestAddress(0), bytearray()) == 0
    with pytest.raises(InvalidGuestAddress):
        memory.read(GuestAddress(0), bytearray(1))


_GUEST_ADDRESS_METHODS: Final[dict[str, Callable[[GuestMemory, Any], object]]] = {
    "read": lambda memory, address: memory.read(address, bytearray(4)),
    "write": lambda memory, address: memory.write(address, b"1234"),
    "read_slice": lambda memory, address: memory.read_slice(address, bytearray(4)),
    "write_slice": lambda memory, address: memory.write_slice(address, b"1234"),
    "read_bytes": lambda memory, address: memory.read_bytes(address, 4),
    "read_obj_unaligned":
        lambda memory, address: memory.read_obj_unaligned(address, ctypes.c_uint32),
    "write_obj_unaligned":
        lambda memory, address: memory.write_obj_unaligned(address, ctypes.c_uint32, 7),
    "find_region": lambda memory, address: memory.find_region(address),
    "address_in_range": lambda memory, address: memory.address_in_range(address),
    "check_address": lambda memory, address: memory.check_address(address),
    "check_range": lambda memory, address: memory.check_range(address, 4),
    "to_region_addr": lambda memory, address: memory.to_region_addr(address),
    "get_host_address": lambda memory, address: memory.get_host_address(address),
}
@pytest.mark.parametrize("method", sorted(_GUEST_ADDRESS_METHODS))
def test_plain_int_is_not_a_guest_address(method: str) -> None:
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE)])
    with pytest.raises(TypeError):
        _GUEST_ADDRESS_METHODS[method](memory, 0)


@pytest.mark.parametrize("method", sorted(_GUEST_ADDRESS_METHODS))
def test_region_address_is_not_a_guest_address(method: str) -> None:
    """A region offset is not a guest address, even with the same value."""
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE)])
    with pytest.raises(TypeError):
        _GUEST_ADDRESS_METHODS[method](memory, MemoryRegionAddress(0))


@pytest.mark.parametrize("address", [GuestAddress(0), 0, MemoryRegionAddress(0), None])
def test_typed_aligned_access_needs_an_aligned_address(address: object) -> None:
    """read_obj/write_obj take only an AlignedGuestAddress, which proves alignment."""
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE)])
    with pytest.raises(TypeError, match="AlignedGuestAddress"):
        memory.read_obj(address)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="AlignedGuestAddress"):
        memory.write_obj(address, 1)  # type: ignore[call-overload]
