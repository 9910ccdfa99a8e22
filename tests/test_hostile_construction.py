"""Hostile construction: what a caller builds regions, mappings and bitmaps from.

The access paths trust a region's fields (its host address above all: the atomics use it
as a raw pointer), so everything those fields come from is admitted by its real type and
read once: the mapping a region is placed on, the `mmap` a mapping wraps, the
`read_only` flag, a hand-built region's buffer, a region class's own attribute lookup
(mixins and `__getattribute__` included), a dirty bitmap's fields. Each case below was an
interpreter crash (SIGSEGV) on both paths, cold, before its refusal; each runs in a
child interpreter on both paths, beside a control that is accepted and a control showing
that the step it guards does crash when reached.
"""

from __future__ import annotations

import json
import mmap
import signal
import socket
from typing import Any, Final

import pytest
from support import run_python

from vm_memory import (
    DirtyBitmap,
    GuestAddress,
    GuestMemoryAtomic,
    GuestMemoryMmap,
    GuestMemoryRegion,
    InvalidArgumentType,
    InvalidRange,
    MmapRegion,
    VolatileSlice,
    receive_memory,
    send_memory,
)

PAGE: Final = mmap.PAGESIZE
PATHS: Final = ("compiled", "pure")

HOSTILE_PROGRAM: Final = """
import ctypes, json, mmap, sys
from vm_memory import (AlignedGuestAddress, GuestAddress, GuestMemory, GuestMemoryMmap,
                       GuestMemoryRegion, GuestRegionMmap, MmapRegion)
from vm_memory.buffers import buffer_address

PAGE = mmap.PAGESIZE
FAR = 0x10000  # a host address nothing here maps
case = sys.argv[1]


class Flip:  # a flag that says read-only to the first check and writable afterwards
    calls = 0
    def __bool__(self):
        Flip.calls += 1
        return Flip.calls == 1


def build():
    if case == "a mapping look-alike":
        class LookAlike:
            __class__ = property(lambda self: MmapRegion)
            closed, size, read_only, host_address = False, PAGE, False, FAR
            view = memoryview(bytearray(PAGE))
            def _add_placement(self, region): pass
        return GuestMemory([GuestRegionMmap(LookAlike(), GuestAddress(0))]), 0x100
    if case == "the real mapping":
        return GuestMemory([GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(0))]), 0x100
    if case == "an mmap whose length lies":
        class Longer(mmap.mmap):
            def __len__(self): return 1 << 30
        region = GuestRegionMmap(MmapRegion(Longer(-1, PAGE), read_only=False, shared=False),
                                 GuestAddress(0))
        return GuestMemory([region]), (1 << 30) - PAGE
    if case == "a flipping read_only":
        view = memoryview(mmap.mmap(-1, PAGE, prot=mmap.PROT_READ))
        return GuestMemory([GuestMemoryRegion(GuestAddress(0), PAGE, read_only=Flip(),
                                              buffer=view,
                                              host_address=buffer_address(view))]), 0x100
    if case == "a flipping read_only mapping":
        mapping = MmapRegion(mmap.mmap(-1, PAGE, prot=mmap.PROT_READ), read_only=Flip(),
                             shared=False)
        return GuestMemory([GuestRegionMmap(mapping, GuestAddress(0))]), 0x100
    if case == "a mixin's host_address":
        class Mixin:
            host_address = property(lambda self: FAR, lambda self, value: None)
        class Mixed(Mixin, GuestMemoryRegion): pass
        return GuestMemory([Mixed(GuestAddress(0), PAGE, read_only=False)]), 0x100
    if case == "a mixin's own field":  # the control: a mixin may add what it likes
        class Mixin:
            label = property(lambda self: "mine")
        class Mixed(Mixin, GuestMemoryRegion): pass
        view = memoryview(bytearray(PAGE))
        return GuestMemory([Mixed(GuestAddress(0), PAGE, read_only=False, buffer=view,
                                  host_address=buffer_address(view))]), 0x100
    if case == "a __getattribute__":
        class Answering(GuestMemoryRegion):
            def __getattribute__(self, name):
                return FAR if name == "host_address" else super().__getattribute__(name)
        return GuestMemory([Answering(GuestAddress(0), PAGE, read_only=False)]), 0x100
    if case == "emptied fixed_attributes":
        class Unfixed(GuestMemoryRegion):
            fixed_attributes = frozenset()
        region = Unfixed(GuestAddress(0), PAGE, read_only=False)
        memory = GuestMemory([region])
        region.host_address = FAR
        return memory, 0x100
    if case == "a skipped __init_subclass__":
        class Quiet(GuestMemoryRegion):
            def __init_subclass__(cls, **kwargs): pass
        class Redefining(Quiet):
            host_address = property(lambda self: FAR, lambda self, value: None)
        return GuestMemory([Redefining(GuestAddress(0), PAGE, read_only=False)]), 0x100
    if case == "a metaclass that claims to be a sound class":
        # its `==` and hash say it is GuestMemoryRegion (admitted before: a set, a tuple)
        class Claiming(type):
            def __eq__(cls, other): return True
            def __hash__(cls): return hash(GuestMemoryRegion)
        class Quiet(GuestMemoryRegion):
            def __init_subclass__(cls, **kwargs): pass
        class Redefining(Quiet, metaclass=Claiming):
            host_address = property(lambda self: FAR, lambda self, value: None)
        GuestMemory([GuestMemoryRegion(GuestAddress(0x10000), PAGE, read_only=False)])
        return GuestMemory([Redefining(GuestAddress(0), PAGE, read_only=False)]), 0x100
    if case == "a released buffer view":
        memory_map = mmap.mmap(-1, PAGE)
        view = memoryview(memory_map)
        memory = GuestMemory([GuestMemoryRegion(GuestAddress(0), PAGE, read_only=False,
                                                buffer=view, host_address=buffer_address(view))])
        view.release()
        try:
            memory_map.close()
            print(json.dumps(["unmapped under the region"]), flush=True)
        except BufferError:
            print(json.dumps(["the region pins it"]), flush=True)
        return memory, 0x100
    if case == "the forged control":  # what every case above would have made: private steps
        region = GuestMemoryRegion.__new__(GuestMemoryRegion)
        region._fill(GuestAddress(0), 0, PAGE, False, memoryview(bytearray(PAGE)), FAR, {})
        return GuestMemory([region]), 0x100
    raise SystemExit(f"unknown case {case}")


try:
    memory, offset = build()
except Exception as error:
    print(json.dumps([type(error).__name__, str(error)]))
    sys.exit(0)
word = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(offset))
print(json.dumps(["made", memory.fetch_add(word, 5), memory.read_atomic(word)]))
"""

REFUSED: Final = {
    "a mapping look-alike": ("InvalidArgumentType", "mapping must be an MmapRegion"),
    "an mmap whose length lies": ("InvalidArgumentType", "mapping must be an mmap.mmap"),
    "a flipping read_only": ("InvalidArgumentType", "read_only must be a bool"),
    "a flipping read_only mapping": ("InvalidArgumentType", "read_only must be a bool"),
    "a mixin's host_address": ("InvalidArgumentType", "host_address must be left to"),
    "a __getattribute__": ("InvalidArgumentType", "__getattribute__ must be left to"),
    "emptied fixed_attributes": ("InvalidArgumentType", "fixed_attributes must be a superset"),
    "a skipped __init_subclass__": ("InvalidArgumentType",
                                    "of a class that keeps the fields the access paths"),
    "a metaclass that claims to be a sound class": (
        "InvalidArgumentType", "of a class that keeps the fields the access paths"),
}


def _run(case: str, path: str) -> Any:
    return run_python("-c", HOSTILE_PROGRAM, case,
                      environment={"VM_MEMORY_PURE": "1"} if path == "pure" else {})


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_would_choose_a_host_pointer_is_refused(case: str, path: str) -> None:
    """Each of these made a region whose atomics used a host address (or a length, or a
    write permission) the memory behind it does not have: a SIGSEGV on both paths."""
    result = _run(case, path)
    assert result.returncode == 0, (result.returncode, result.stderr)
    error, message = json.loads(result.stdout)
    expected_error, expected_message = REFUSED[case]
    assert error == expected_error, message
    assert expected_message in message


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", ["the real mapping", "a mixin's own field"])
def test_honest_parts_still_make_regions(case: str, path: str) -> None:
    """The controls: a real mapping, and a mixin adding a field of its own, are accepted
    and their atomics work."""
    result = _run(case, path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["made", 0, 5]


@pytest.mark.parametrize("path", PATHS)
def test_a_region_with_such_a_host_address_crashes(path: str) -> None:
    """The control that the refusals above are what stands between a caller and a crash:
    the same region made by the private steps kills the interpreter on its first atomic."""
    result = _run("the forged control", path)
    assert result.returncode == -signal.SIGSEGV, (result.returncode, result.stderr)


@pytest.mark.parametrize("path", PATHS)
def test_a_hand_built_region_pins_its_memory(path: str) -> None:
    """A hand-built region holds its own view of its buffer: the caller releasing the view
    it passed cannot let the mmap be closed under the region's host pointer (before, the
    close succeeded and the next atomic was a SIGSEGV on both paths)."""
    result = _run("a released buffer view", path)
    assert result.returncode == 0, (result.returncode, result.stderr)
    pinned, made = result.stdout.splitlines()
    assert json.loads(pinned) == ["the region pins it"]
    assert json.loads(made) == ["made", 0, 5]


def test_a_released_view_no_longer_pins_what_it_viewed() -> None:
    """The control for the test above: without another view, releasing the caller's view
    does let the mapping close (what the region's own view now prevents)."""
    memory_map = mmap.mmap(-1, PAGE)
    view = memoryview(memory_map)
    view.release()
    memory_map.close()
    assert memory_map.closed


BITMAP_PROGRAM: Final = """
import json, sys
from vm_memory import GuestAddress, GuestMemoryMmap
memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x10000)])
memory.track_dirty_pages()
bitmap = memory.regions()[0].dirty
if sys.argv[1] == "assigned":
    try:
        bitmap.view = memoryview(bytearray(b"\\x01" * (1 << 26)))
        bitmap.page_count = 1 << 26
    except AttributeError as error:
        print(json.dumps(["refused", str(error)]))
        sys.exit(0)
else:  # the control: the same map, reached through its private fields
    object.__setattr__(bitmap, "view", memoryview(bytearray(b"\\x01" * (1 << 26))))
    object.__setattr__(bitmap, "page_count", 1 << 26)
print(json.dumps(["taken", len(bitmap.take_dirty_pages())]))
"""


@pytest.mark.parametrize("path", PATHS)
def test_a_dirty_bitmaps_fields_are_fixed(path: str) -> None:
    """`take_dirty_pages` exchanges words at the map's address for the pages its view
    shows: a view or page count assigned by hand made it write past the map."""
    result = run_python("-c", BITMAP_PROGRAM, "assigned",
                        environment={"VM_MEMORY_PURE": "1"} if path == "pure" else {})
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert json.loads(result.stdout) == ["refused",
                                         "DirtyBitmap.view is fixed at construction"]


def test_a_dirty_bitmap_with_such_fields_crashes() -> None:
    """The control: the same fields set past the guard kill the interpreter."""
    result = run_python("-c", BITMAP_PROGRAM, "forced")
    assert result.returncode == -signal.SIGSEGV, (result.returncode, result.stderr)


# ---- Buffers of hand-built regions ----------------------------------------------------


def _region_over(view: memoryview) -> GuestMemoryRegion:
    return GuestMemoryRegion(GuestAddress(0), 16, read_only=False, buffer=view)


def _released() -> memoryview:
    view = memoryview(bytearray(16))
    view.release()
    return view


@pytest.mark.parametrize(("buffer", "expected"), [
    (lambda: memoryview(bytearray(32))[::2], "a C-contiguous memoryview"),
    (lambda: memoryview(bytearray(16))[::-1], "a C-contiguous memoryview"),
    (lambda: bytearray(16), "a memoryview"),
    (_released, "a memoryview not released"),
], ids=["strided", "reversed", "a bytearray", "released"])
def test_a_region_buffer_must_be_a_live_contiguous_memoryview(buffer: Any,
                                                               expected: str) -> None:
    """These were accepted (or failed with AttributeError/ValueError) and then gave bare
    BufferError/TypeError on reads and writes, differently on each path."""
    with pytest.raises(InvalidArgumentType, match=f"buffer must be {expected}"):
        _region_over(buffer())


ONE_BYTE_FORMATS_PROGRAM: Final = """
import ctypes, json
from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemory, GuestMemoryRegion
from vm_memory.guest_memory import forget_fast_atomics

def answers(code):
    view = memoryview(bytearray(range(16)))
    if code != "B":
        view = view.cast(code) if code != "<B" else memoryview((ctypes.c_ubyte * 16)(*range(16)))
    memory = GuestMemory([GuestMemoryRegion(GuestAddress(0), 16, read_only=False, buffer=view)])
    at = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(4))
    calls = [lambda: memory.write_slice(GuestAddress(2), b"ab"),
             lambda: memory.write_obj(at, 0x01020304),
             lambda: memory.read_obj(at),
             lambda: memory.read_obj_unaligned(GuestAddress(1), ctypes.c_uint32),
             lambda: memory.write_obj_unaligned(GuestAddress(9), ctypes.c_uint16, 7),
             lambda: memory.read_bytes(GuestAddress(0), 16).hex()]
    result = []
    for temperature in ("cold", "warm"):
        forget_fast_atomics()
        for call in calls:
            try:
                result.append(repr(call()))
            except Exception as error:
                result.append(type(error).__name__)
    return result

print(json.dumps({code: answers(code) for code in ("B", "c", "?", "b", "<B")}))
"""


def test_a_one_byte_format_buffer_answers_as_a_byte_buffer() -> None:
    """A region over a `c`, `?`, `b` or `<B` view takes a byte view of it: every call
    answers as over a `B` view, cold and warm, on both paths (before, writes were a bare
    ValueError and the two paths disagreed)."""
    outputs: list[dict[str, list[str]]] = []
    for path in PATHS:
        result = run_python("-c", ONE_BYTE_FORMATS_PROGRAM,
                            environment={"VM_MEMORY_PURE": "1"} if path == "pure" else {})
        assert result.returncode == 0, result.stderr
        outputs.append(json.loads(result.stdout))
    compiled, pure = outputs
    assert compiled == pure
    reference = compiled["B"]
    assert "ValueError" not in reference and reference[:6] == reference[6:12]
    for code, answers in compiled.items():
        assert answers == reference, code


# ---- Careless arguments to public helpers ----------------------------------------------


def test_careless_arguments_are_typed_errors() -> None:
    memory = GuestMemoryMmap.from_ranges_memfd([(GuestAddress(0), 0x10000)])
    region = memory.regions()[0]
    wrong: Any = 42
    with pytest.raises(InvalidArgumentType):
        GuestMemoryAtomic(wrong)
    holder = GuestMemoryAtomic(memory)
    with pytest.raises(InvalidArgumentType):
        holder.update(lambda current: wrong)
    assert holder.memory() is memory  # nothing published
    with pytest.raises(InvalidArgumentType):
        VolatileSlice(memory, wrong, 0, 1)
    with pytest.raises(InvalidRange):
        VolatileSlice(memory, region, -16, 8)
    with pytest.raises(InvalidArgumentType):
        VolatileSlice(memory, region, 0.0, 8)  # type: ignore[arg-type]
    bitmap = DirtyBitmap(0x10000)
    with pytest.raises(InvalidArgumentType):
        bitmap.mark(wrong.__str__(), 1)
    with pytest.raises(InvalidRange):
        bitmap.mark(-1, 1)  # marked the last page before
    with pytest.raises(InvalidArgumentType):
        bitmap.is_dirty("0")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType):
        MmapRegion(mmap.mmap(-1, PAGE), read_only=False, shared=True, fd=wrong.__str__())
    with pytest.raises(InvalidArgumentType):
        send_memory(wrong, memory)
    with pytest.raises(InvalidArgumentType):
        receive_memory(wrong)
    assert bitmap.dirty_pages() == []
    # The controls: the same calls with honest arguments.
    assert VolatileSlice(memory, region, 8, 8).to_bytes() == bytes(8)
    bitmap.mark(PAGE, 1)
    assert bitmap.is_dirty(1) and bitmap.dirty_pages() == [1]
    assert holder.update(lambda current: current) is memory
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        send_memory(left, memory)
        assert receive_memory(right).num_regions() == 1

