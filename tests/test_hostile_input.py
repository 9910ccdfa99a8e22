"""Hostile and careless input: a typed error that carries the facts, and nothing lost.

The cases the adversarial review reproduced: forged alignment, allocations sized by a
guest, file objects that answer None or fail half-way, more spans than one system call
takes, writes across region kinds that fail half-way, bools a guest stored as 2,
malformed memory tables from a peer, and a list of untyped errors and leaks.
"""

from __future__ import annotations

import ctypes
import errno
import io
import json
import os
import signal
import socket
import tempfile
import textwrap
import threading
import tracemalloc
from pathlib import Path
from typing import Any, Final

import numpy as np
import pytest
from host_assumptions import EIGHT_BYTE_REFUSAL
from support import ByteDevice, run_python

from vm_memory import (
    AddressOutOfRange,
    AddressOverflow,
    AlignedGuestAddress,
    DeviceRegion,
    DirtyBitmap,
    FileOffset,
    FileRegion,
    GuestAddress,
    GuestMemory,
    GuestMemoryError,
    GuestMemoryMmap,
    GuestMemoryRegion,
    GuestRegionMmap,
    InvalidAlignment,
    InvalidArgumentType,
    InvalidGuestValue,
    InvalidRange,
    MalformedMemoryTable,
    MappingError,
    MisalignedAddress,
    MmapRegion,
    PartialBuffer,
    RegionIoError,
    RegionOverlap,
    receive_memory,
)
from vm_memory.stream_io import IOV_MAX
from vm_memory_virtio import VirtqueueError, write_bytes

PAGE: Final = 4096


def u64(offset: int) -> AlignedGuestAddress[ctypes.c_uint64]:
    return AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(offset))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Lying(int):
    """An int subclass whose remainder is always 0 and whose int() is 0."""

    def __mod__(self, other: object) -> int:
        return 0

    def __int__(self) -> int:
        return 0


# ---- Forged alignment and escapes --------------------------------------------------------


def test_alignment_cannot_be_forged() -> None:
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE)])
    address = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(8))
    with pytest.raises(InvalidArgumentType):
        address.offset(0.25)  # type: ignore[arg-type]
    with pytest.raises(MisalignedAddress):  # a lying remainder does not keep the type
        _ = address + Lying(2)
    shifted = address.addr + Lying(2)
    with pytest.raises(InvalidArgumentType):
        memory.write_obj(shifted, 1)  # type: ignore[call-overload]
    with pytest.raises(InvalidArgumentType):
        memory.read_atomic(shifted)  # type: ignore[call-overload]
    array = memory.get_slice(GuestAddress(0), 64).get_array_ref(ctypes.c_uint32, 0, 4)
    with pytest.raises(InvalidArgumentType):
        array[0.5]  # type: ignore[index]
    wide = AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(8))
    with pytest.raises(AddressOverflow):
        wide.offset(np.uint64(2**61))  # type: ignore[arg-type]


SPOOFED_OFFSET_PROGRAM: Final = """
import ctypes, json, sys
from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap

class Pointer:  # what `+` would store as the address: any host pointer it likes
    def __lt__(self, other): return True
    __le__ = __gt__ = __ge__ = __lt__
    def __add__(self, other): return 0x10

class IntLike:  # an int by __class__, in range by comparison, 0 as every remainder
    @property
    def __class__(self): return int
    def __lt__(self, other): return True
    __le__ = __gt__ = __ge__ = __lt__
    def __and__(self, other): return 0
    __rand__ = __and__
    def __radd__(self, other): return Pointer()
    def __rsub__(self, other): return Pointer()

memory = GuestMemoryMmap.from_ranges([(GuestAddress(0x1000), 0x1000)])
good = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(0x1000))
memory.write_atomic(good, 7)
memory.fetch_add(good, 0)  # the fast paths are warm
answers = {"fooled": IntLike().__class__ is int}
if sys.argv[1] == "made by hand":  # the control: what `+` must never make
    from vm_memory.aligned_address import _construct, alignment_info
    forged = _construct(Pointer(), alignment_info(ctypes.c_uint32))
    print(json.dumps(answers), flush=True)
    memory.read_atomic(forged)
for name, move in [("aligned +", lambda: good + IntLike()), ("aligned -", lambda: good - IntLike()),
                   ("plain +", lambda: GuestAddress(0x1000) + IntLike()),
                   ("plain -", lambda: GuestAddress(0x1000) - IntLike())]:
    try:
        moved = move()
        answers[name] = ["made", type(moved).__name__, type(moved.raw_value()).__name__]
        answers[name + " read"] = memory.read_atomic(moved)
    except Exception as error:
        answers[name] = type(error).__name__
print(json.dumps(answers))
"""


@pytest.mark.parametrize("path", ["compiled", "pure"])
def test_an_object_claiming_to_be_an_int_cannot_move_an_address(path: str) -> None:
    """An offset whose `__class__` says int (and whose comparisons say in range) is not
    an int: `+` and `-` refuse it on both paths, so no address holds a value the
    checked constructors did not make."""
    environment = {"VM_MEMORY_PURE": "1"} if path == "pure" else {}
    result = run_python("-c", SPOOFED_OFFSET_PROGRAM, "public", environment=environment)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    assert answers == {"fooled": True, "aligned +": "InvalidArgumentType",
                       "aligned -": "InvalidArgumentType", "plain +": "InvalidArgumentType",
                       "plain -": "InvalidArgumentType"}, answers


def test_an_address_holding_such_a_value_would_crash_the_pure_path() -> None:
    """The control: an aligned address made by hand with the value `+` would have
    stored (the constructors' private last step) makes the warm pure atomic path load
    from host address 0x10 — the whole interpreter dies. The refusals above are what
    stand between a careless caller and this."""
    result = run_python("-c", SPOOFED_OFFSET_PROGRAM, "made by hand",
                        environment={"VM_MEMORY_PURE": "1"})
    assert json.loads(result.stdout.splitlines()[0]) == {"fooled": True}
    assert result.returncode == -signal.SIGSEGV, (result.returncode, result.stderr)


HOST_ADDRESS_PROGRAM: Final = """
import ctypes, json, sys
from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemory, GuestMemoryRegion
from vm_memory.buffers import buffer_address

view = memoryview(bytearray(4096))
real = buffer_address(view)
given = {"real": real, "8 past": real + 8, "low page": 0x10, "not an int": str(real),
         "a float": float(real)}[sys.argv[1]]
try:
    region = GuestMemoryRegion(GuestAddress(0), 4096, read_only=False, buffer=view,
                               host_address=given)
except Exception as error:
    print(json.dumps([type(error).__name__, str(error)]))
    sys.exit(0)
memory = GuestMemory([region])
at = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(8))
memory.write_atomic(at, 5)
print(json.dumps(["made", memory.fetch_add(at, 1), memory.read_atomic(at),
                  int.from_bytes(view[8:12], sys.byteorder)]))
"""


@pytest.mark.parametrize("path", ["compiled", "pure"])
@pytest.mark.parametrize("given", ["8 past", "low page", "not an int", "a float"])
def test_a_hand_built_regions_host_address_must_be_its_buffers(given: str,
                                                                path: str) -> None:
    """The atomic paths compute host pointers from a region's `host_address`: one that
    is not the address of its buffer's first byte is refused at construction (before,
    the atomics used it — "low page" was a SIGSEGV)."""
    environment = {"VM_MEMORY_PURE": "1"} if path == "pure" else {}
    result = run_python("-c", HOST_ADDRESS_PROGRAM, given, environment=environment)
    assert result.returncode == 0, (result.returncode, result.stderr)
    error, message = json.loads(result.stdout)
    assert error == "MappingError", message
    assert "is not the address of the buffer's first byte" in message


@pytest.mark.parametrize("path", ["compiled", "pure"])
def test_a_hand_built_region_with_its_buffers_host_address_is_atomic(path: str) -> None:
    """The control: the buffer's own address is accepted, and the atomics work on it
    (through host memory: the bytes change under the buffer)."""
    environment = {"VM_MEMORY_PURE": "1"} if path == "pure" else {}
    result = run_python("-c", HOST_ADDRESS_PROGRAM, "real", environment=environment)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["made", 5, 6, 6]


class RegionLookAlike:
    """Not a region, but one by `__class__` and isinstance, with the fields the access
    paths read: its atomic limits and delta would point the atomics at host address 0."""

    start_value, end_value, length, read_only = 0, PAGE, PAGE, False
    atomic_read_limit = atomic_write_limit = atomic_untracked_limit = PAGE - 7
    read_limit = write_limit = PAGE - 7
    atomic_delta, host_address, buffer, dirty, closed = 0, 0, None, None, False
    typed_views: dict[str, memoryview] = {}  # noqa: RUF012

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # pyright: ignore[reportIncompatibleMethodOverride]
        return GuestRegionMmap


def test_a_region_look_alike_is_refused_by_every_memory_class() -> None:
    look_alike: Any = RegionLookAlike()
    assert isinstance(look_alike, GuestRegionMmap)  # the control: isinstance is fooled
    with pytest.raises(InvalidArgumentType):
        GuestMemory([look_alike])
    with pytest.raises(InvalidArgumentType):
        GuestMemoryMmap([look_alike])
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0x10000), PAGE)])
    with pytest.raises(InvalidArgumentType):
        memory.insert_region(look_alike)
    assert memory.holds(look_alike) is False


TRUSTED_FIELDS: Final = ("start", "start_value", "length", "read_only", "buffer",
                         "host_address", "dirty", "end_value", "atomic_delta", "read_limit",
                         "write_limit", "atomic_read_limit", "atomic_write_limit",
                         "atomic_untracked_limit", "typed_views")


@pytest.mark.parametrize("field", TRUSTED_FIELDS)
def test_a_region_subclass_cannot_redefine_a_field_the_paths_trust(field: str) -> None:
    """A new region kind adds fields and methods; a property in place of `atomic_delta`
    (or any field the access paths read) would choose the host pointers, so the class
    itself is refused."""
    with pytest.raises(InvalidArgumentType, match=f"{field} must be left to"):
        type("Redefining", (GuestMemoryRegion,), {field: property(lambda self: 0)})
    with pytest.raises(InvalidArgumentType, match=f"{field} must be left to"):
        type("Slotting", (GuestMemoryRegion,), {"__slots__": (field,)})
    # The control: the same class with a field of its own is a region kind like any.
    kind = type("Adding", (GuestMemoryRegion,), {f"my_{field}": property(lambda self: 0)})
    region = kind(GuestAddress(0), PAGE, read_only=True)
    assert GuestMemory([region]).num_regions() == 1


def test_a_lying_offset_cannot_escape_a_slice() -> None:
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 2 * PAGE)])
    piece = memory.get_slice(GuestAddress(PAGE), 0x100)
    with pytest.raises(AddressOutOfRange):
        piece.subslice(Lying(-0x100), 0x10)
    with pytest.raises(AddressOutOfRange):
        piece.write(Lying(-0x100), b"x" * 0x10)
    assert memory.read_bytes(GuestAddress(0), 2 * PAGE) == bytes(2 * PAGE)


# ---- Allocations sized by the guest -------------------------------------------------------


@pytest.mark.parametrize("length", [2**32, 2**40, 2**63])
def test_read_bytes_checks_before_it_allocates(length: int) -> None:
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE)])
    tracemalloc.start()
    try:
        with pytest.raises(PartialBuffer) as raised:
            memory.read_bytes(GuestAddress(0), length)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (raised.value.expected, raised.value.available) == (length, PAGE)
    assert peak < 1 << 20, f"{peak} bytes allocated for a refused read"


# ---- Stream I/O through file objects -----------------------------------------------------


class Trickle(io.RawIOBase):
    """A raw stream that moves `per_call` bytes a call, then answers `then` (None: would
    block; an exception: fails)."""

    def __init__(self, data: bytes, calls: int, then: BaseException | None) -> None:
        self.data = bytearray(data)
        self.calls = calls
        self.then = then
        self.written = bytearray()

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def _next(self) -> bool:
        if self.calls == 0:
            if self.then is not None:
                raise self.then
            return False
        self.calls -= 1
        return True

    def readinto(self, buffer: Any) -> int | None:
        if not self._next():
            return None
        count = min(len(buffer), len(self.data))
        buffer[:count] = self.data[:count]
        del self.data[:count]
        return count

    def write(self, buffer: Any) -> int | None:
        if not self._next():
            return None
        self.written += bytes(buffer)
        return len(buffer)


def spanning_memory() -> GuestMemoryMmap:
    """Three adjacent one-page regions: a stream call moves one view per region."""
    return GuestMemoryMmap.from_ranges([(GuestAddress(index * PAGE), PAGE)
                                        for index in range(3)])


@pytest.mark.parametrize("then", [None, OSError(errno.EIO, "disk on fire")],
                         ids=["would-block", "fails"])
def test_file_object_stops_half_way(then: BaseException | None) -> None:
    """After one view moved, None or an error: the count says one page; before any byte
    moved, it is an error (BlockingIOError for None), never a 0 that means end of stream."""
    memory = spanning_memory()
    source = Trickle(b"a" * 3 * PAGE, 1, then)
    assert memory.read_from(GuestAddress(0), source, 3 * PAGE) == PAGE
    with pytest.raises(BlockingIOError if then is None else OSError):
        memory.read_from(GuestAddress(PAGE), source, 2 * PAGE)
    sink = Trickle(b"", 1, then)
    assert memory.write_to(GuestAddress(0), sink, 3 * PAGE) == PAGE
    assert bytes(sink.written) == b"a" * PAGE
    with pytest.raises(PartialBuffer) as raised:
        memory.write_all_to(GuestAddress(0), Trickle(b"", 2, then), 3 * PAGE)
    assert raised.value.completed == 2 * PAGE
    assert raised.value.__cause__ is not None


def test_more_spans_than_one_system_call_takes(tmp_path: Path) -> None:
    count = IOV_MAX + 500
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(index * PAGE), PAGE)
                                          for index in range(count)])
    data = bytes(range(256)) * (count * PAGE // 256)
    path = tmp_path / "data"
    path.write_bytes(data)
    with open(path, "rb") as handle:
        assert memory.read_from(GuestAddress(0), handle.fileno(), len(data)) == len(data)
    assert memory.read_bytes(GuestAddress(0), len(data)) == data
    with open(path, "r+b") as out:
        out.truncate(0)
        assert memory.write_to(GuestAddress(0), out.fileno(), len(data),
                               file_offset=0) == len(data)
    assert path.read_bytes() == data
    ours, theirs = socket.socketpair()
    with ours, theirs:
        received = bytearray()

        def drain() -> None:
            while len(received) < len(data):
                received.extend(theirs.recv(1 << 20))

        reader = threading.Thread(target=drain)
        reader.start()
        memory.write_all_to(GuestAddress(0), ours, len(data))
        reader.join()
    assert bytes(received) == data


# ---- All or nothing across region kinds ---------------------------------------------------


def test_a_failing_file_span_leaves_host_memory_untouched(tmp_path: Path) -> None:
    path = tmp_path / "ro"
    path.write_bytes(bytes(PAGE))
    fd = os.open(path, os.O_RDONLY)  # pwrite fails with EBADF
    try:
        first = GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(0))
        memory = GuestMemory([first, FileRegion(fd, GuestAddress(PAGE), PAGE)])
        with pytest.raises(RegionIoError) as raised:
            memory.write_slice(GuestAddress(PAGE - 8), b"x" * 16)
        assert raised.value.errno == errno.EBADF
        assert memory.read_bytes(GuestAddress(0), PAGE) == bytes(PAGE)
    finally:
        os.close(fd)


def test_a_second_failing_file_span_puts_the_first_back(tmp_path: Path) -> None:
    good_path, bad_path = tmp_path / "good", tmp_path / "bad"
    good_path.write_bytes(b"g" * PAGE)
    bad_path.write_bytes(b"b" * PAGE)
    good = os.open(good_path, os.O_RDWR)
    bad = os.open(bad_path, os.O_RDONLY)
    try:
        memory = GuestMemory([FileRegion(good, GuestAddress(0), PAGE),
                              FileRegion(bad, GuestAddress(PAGE), PAGE)])
        with pytest.raises(RegionIoError):
            memory.write_slice(GuestAddress(PAGE - 4), b"12345678")
        assert good_path.read_bytes() == b"g" * PAGE
    finally:
        os.close(good)
        os.close(bad)


def _two_pages_on_each_kind(handle: io.BufferedRandom) -> list[GuestMemory]:
    """Two pages of guest memory: in mmap regions, and an mmap region then a file region
    (over `handle`'s first page)."""
    return [GuestMemoryMmap.from_ranges([(GuestAddress(0), 2 * PAGE)]),
            GuestMemory([GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(0)),
                         FileRegion(handle.fileno(), GuestAddress(PAGE), PAGE)])]


def test_strided_buffers_get_the_same_answer_on_every_kind(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(PAGE))
    with open(path, "r+b") as handle:
        memories = _two_pages_on_each_kind(handle)
        strided = memoryview(bytearray(64))[::2]
        for memory in memories:
            for method in (memory.write_slice, memory.read_slice, memory.write):
                with pytest.raises(InvalidArgumentType, match="contiguous"):
                    method(GuestAddress(PAGE - 8), strided)
            assert memory.read_bytes(GuestAddress(0), 2 * PAGE) == bytes(2 * PAGE)


def test_a_released_or_empty_buffer_gets_the_same_answer_on_every_kind(
        tmp_path: Path) -> None:
    """A released memoryview is `InvalidArgumentType` (a raw ValueError escaped), and an
    array with a zero in its shape is an empty buffer (memoryview.cast raised TypeError),
    on every call that takes a buffer, on mmap and file regions, nothing written."""
    path = tmp_path / "f"
    path.write_bytes(bytes(PAGE))
    with open(path, "r+b") as handle:
        memories = _two_pages_on_each_kind(handle)
        released = memoryview(bytearray(16))
        released.release()
        empty: Any = np.zeros((0, 3))  # numpy's own stubs do not say it is a buffer
        for memory in memories:
            calls = (memory.write_slice, memory.read_slice, memory.write, memory.read)
            for warm in (False, True):
                for method in calls:
                    if warm:  # the fast paths primed on this very address (zeros)
                        method(GuestAddress(PAGE - 8), bytearray(16))
                    with pytest.raises(InvalidArgumentType, match="bytes-like"):
                        method(GuestAddress(PAGE - 8), released)
                    answer = method(GuestAddress(PAGE - 8), empty)
                    assert answer in (None, 0), (method, answer)
            with pytest.raises(InvalidArgumentType, match="bytes-like"):
                write_bytes(memory, [(PAGE - 8, 16)], released)
            assert write_bytes(memory, [(PAGE - 8, 16)], empty) == 0
            assert memory.read_bytes(GuestAddress(0), 2 * PAGE) == bytes(2 * PAGE)


def test_overlapping_copies_across_a_region_boundary() -> None:
    """Source and destination overlap and cross two regions: the result is what a copy
    of the source made first would give (memmove semantics)."""
    for shift in (-5, 5):
        memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE),
                                              (GuestAddress(PAGE), PAGE)])
        pattern = bytes(index % 251 for index in range(2 * PAGE))
        memory.write_slice(GuestAddress(0), pattern)
        source = memory.get_slice(GuestAddress(PAGE - 100), 100).as_memoryview()
        second = memory.get_slice(GuestAddress(PAGE), 100).as_memoryview()
        joined = memoryview(bytearray(200))
        expected = bytearray(pattern)
        start = PAGE - 100 + shift
        expected[start:start + 100] = pattern[PAGE - 100:PAGE]
        memory.write_slice(GuestAddress(start), source)  # one region's view, two targets
        assert memory.read_bytes(GuestAddress(0), 2 * PAGE) == bytes(expected)
        del joined, second
        # reading into guest memory from across the boundary
        memory.write_slice(GuestAddress(0), pattern)
        target = memory.get_slice(GuestAddress(PAGE - 150), 100).as_memoryview()
        memory.read_slice(GuestAddress(PAGE - 150 + shift + 60), target)
        expected = bytearray(pattern)
        origin = PAGE - 150 + shift + 60
        expected[PAGE - 150:PAGE - 50] = pattern[origin:origin + 100]
        assert memory.read_bytes(GuestAddress(0), 2 * PAGE) == bytes(expected)


# ---- c_bool values a guest stored as 2 ----------------------------------------------------


def _bool_memories() -> list[GuestMemory]:
    return [GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE)]),
            GuestMemory([DeviceRegion(ByteDevice(bytes(PAGE)), GuestAddress(0), PAGE)])]


@pytest.mark.parametrize("kind", ["mmap", "device"])
def test_a_non_canonical_bool_is_true_and_ends_every_cas_loop(kind: str) -> None:
    memory = _bool_memories()[kind == "device"]
    flag = AlignedGuestAddress.new(ctypes.c_bool, GuestAddress(0x10))

    def guest_stores_two() -> None:
        memory.write_slice(GuestAddress(0x10), b"\x02")

    def stored() -> int:
        return memory.read_bytes(GuestAddress(0x10), 1)[0]

    guest_stores_two()
    assert memory.read_atomic(flag) is True
    assert memory.read_obj(flag) is True
    assert memory.compare_exchange(flag, True, False) == (True, True)
    assert stored() == 0
    guest_stores_two()
    assert memory.compare_exchange(flag, False, True) == (False, True)
    assert stored() == 2, "a failed compare-exchange stores nothing"
    expected = True
    ok = False
    for _ in range(3):  # the loop every device driver writes: it must end
        ok, expected = memory.compare_exchange(flag, expected, not expected)
        if ok:
            break
    assert ok and stored() == 0
    for operation, value, result, after in (("swap", False, True, 0),
                                            ("fetch_and", True, True, 1),
                                            ("fetch_or", False, True, 1),
                                            ("fetch_xor", True, True, 0)):
        guest_stores_two()
        assert getattr(memory, operation)(flag, value) is result, operation
        assert stored() == after, operation


# ---- A peer's malformed memory table ------------------------------------------------------


def _framed(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "little") + payload


def _table(rows: Any) -> bytes:
    return _framed(json.dumps(rows).encode())


def _row(**changes: Any) -> dict[str, Any]:
    return {"guest_start": 0, "size": PAGE, "file_offset": 0, "read_only": False} | changes


MALFORMED: Final[dict[str, bytes]] = {
    "not json": b"\x05\x00\x00\x00{oops",
    "short prefix": b"\x01\x00",
    "prefix lies": (100).to_bytes(4, "little") + b"[]",
    "deep nesting": _framed(b"[" * 30_000 + b"]" * 30_000),
    "not a list": _table({"rows": 1}),
    "row not an object": _table([1]),
    "missing key": _table([{"guest_start": 0}]),
    "extra key": _table([_row(evil=1)]),
    "float offset": _table([_row(file_offset=0.5)]),
    "string size": _table([_row(size="4096")]),
    "bool size": _table([_row(size=True)]),
    "negative start": _table([_row(guest_start=-4096)]),
    "huge size": _table([_row(size=2**70)]),
    "unaligned offset": _table([_row(file_offset=100)]),
    "too many rows": _table([_row(), _row(guest_start=PAGE)]),
    "overlap": _table([_row(), _row()]),
    "bad utf-8": b"\x02\x00\x00\x00\xff\xfe",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_table_is_a_typed_error_and_closes_every_fd(name: str) -> None:
    fds = [os.memfd_create("table", os.MFD_ALLOW_SEALING) for _ in range(2)]
    for fd in fds:
        os.ftruncate(fd, PAGE)
    sent = fds[:2] if name in ("overlap",) else fds[:1]
    ours, theirs = socket.socketpair()
    try:
        before = open_fds()
        socket.send_fds(ours, [MALFORMED[name]], sent)
        with pytest.raises(GuestMemoryError) as raised:
            receive_memory(theirs, trust_unsealed=True)
        assert isinstance(raised.value, MalformedMemoryTable | RegionOverlap | InvalidRange), \
            raised.value
        assert open_fds() == before, "a received fd leaked"
    finally:
        ours.close()
        theirs.close()
        for fd in fds:
            os.close(fd)


# ---- Untyped errors and leaks -------------------------------------------------------------


def test_typed_errors_for_careless_calls(tmp_path: Path) -> None:
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE)])
    with pytest.raises(InvalidAlignment):
        GuestAddress(0x1000).align_up(0)
    with pytest.raises(InvalidArgumentType):
        memory.remove_region(0, PAGE)  # type: ignore[arg-type]
    with pytest.raises(InvalidRange):
        FileOffset(3, -1)
    with pytest.raises(InvalidArgumentType):
        FileOffset(-1)
    with pytest.raises(AddressOutOfRange):
        DirtyBitmap(2**64)
    with pytest.raises(MappingError):
        MmapRegion.from_file(2**20, PAGE)  # not an open fd
    with pytest.raises(InvalidArgumentType):
        MmapRegion.from_file(-1, PAGE)
    assert issubclass(VirtqueueError, GuestMemoryError)


@pytest.mark.parametrize("size", [2**63, 2**64, -1, 0])
def test_impossible_sizes_are_refused_without_a_leak(size: int) -> None:
    before = open_fds()
    for build in (MmapRegion.memfd, MmapRegion.anonymous):
        with pytest.raises(InvalidRange):
            build(size)
    assert open_fds() == before


def test_a_guest_written_wide_char_is_a_typed_error() -> None:
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE)])
    memory.write_slice(GuestAddress(0x20), b"\xff" * ctypes.sizeof(ctypes.c_wchar))
    with pytest.raises(InvalidGuestValue) as raised:
        memory.read_obj_unaligned(GuestAddress(0x20), ctypes.c_wchar)
    assert raised.value.address == 0x20
    with pytest.raises(InvalidGuestValue):
        memory.read_obj(AlignedGuestAddress.new(ctypes.c_wchar, GuestAddress(0x20)))


def test_a_refused_insert_leaves_the_region_as_it_was() -> None:
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 2 * PAGE)])
    memory.track_dirty_pages()
    colliding = GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(PAGE))
    with pytest.raises(RegionOverlap):
        memory.insert_region(colliding)
    assert colliding.dirty is None
    alone = GuestMemoryMmap.from_regions([colliding])
    alone.write_obj(u64(PAGE), 1)
    assert alone.read_obj(u64(PAGE)) == 1


FORK_WHILE_LOCKED: Final = textwrap.dedent('''
    import os, sys, threading, time
    from vm_memory import *
    entered, release = threading.Event(), threading.Event()
    class Slow:
        def read(self, offset, size):
            entered.set()
            release.wait()
            return bytes(size)
        def write(self, offset, data):
            pass
    memory = GuestMemory([DeviceRegion(Slow(), GuestAddress(0), 4096)])
    holder = threading.Thread(target=lambda: memory.read_bytes(GuestAddress(0), 8))
    holder.start()
    entered.wait()
    pid = os.fork()
    if pid == 0:
        release.set()  # the child's copy of the event: nobody waits on it here
        memory.write_slice(GuestAddress(0), b"child")
        os._exit(0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print("deadlocked")
        release.set()
        sys.exit(0)
    release.set()
    holder.join()
    print("ok" if os.waitstatus_to_exitcode(status) == 0 else "failed")
''')


def test_a_device_region_lock_is_reset_in_a_forked_child() -> None:
    child = run_python("-c", FORK_WHILE_LOCKED, timeout=180)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "ok"


def test_region_io_error_for_an_unwritable_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(PAGE))
    fd = os.open(path, os.O_RDONLY)
    try:
        memory = GuestMemory([FileRegion(fd, GuestAddress(0), PAGE)])
        with pytest.raises(RegionIoError) as raised:
            memory.write_obj(u64(8), 5)
        assert raised.value.address == 8 and raised.value.errno == errno.EBADF
    finally:
        os.close(fd)


def test_stream_error_before_any_byte_is_raised_as_is() -> None:
    memory = spanning_memory()
    with tempfile.TemporaryFile() as handle:
        with pytest.raises(OSError):
            memory.read_from(GuestAddress(0), 2**20, 16)  # a closed fd: EBADF
        assert memory.read_from(GuestAddress(0), handle.fileno(), 16) == 0  # end of file


LYING_TYPE_PROGRAM: Final = """
import ctypes, json, sys
from vm_memory import (AlignedGuestAddress, AtomicWidthUnsupported, GuestAddress,
                       GuestMemoryError, GuestMemoryMmap)

class Liar(type(ctypes.c_uint8)):
    def __eq__(cls, other): return other is ctypes.c_uint64 or cls is other
    def __hash__(cls): return hash(ctypes.c_uint64)

class Fake(ctypes.c_uint8, metaclass=Liar):
    pass

class Disguise(type):  # makes Sly's metaclass look as if it kept type's == and hash()
    def __getattribute__(cls, name):
        if name in ("__eq__", "__hash__"):
            return getattr(type, name)
        return type.__getattribute__(cls, name)

class SlyMeta(type(ctypes.c_uint8), metaclass=Disguise):
    def __eq__(cls, other): return other is ctypes.c_uint64 or cls is other
    def __hash__(cls): return hash(ctypes.c_uint64)

class Sly(ctypes.c_uint8, metaclass=SlyMeta):
    pass

class Plain(type(ctypes.c_uint8)):  # honest when first seen, patched to lie afterwards
    pass

class Later(ctypes.c_uint8, metaclass=Plain):
    pass

class Raising(type(ctypes.c_uint8)):
    def __hash__(cls): raise ValueError("no hash today")

class Unhashed(ctypes.c_uint8, metaclass=Raising):
    pass

memory = GuestMemoryMmap.from_ranges([(GuestAddress(0x1000), 0x1000)])
place = GuestAddress(0x1ff8)

def use(ctype):
    try:
        aligned = AlignedGuestAddress.new(ctype, place)
        memory.write_obj(aligned, 0x1122334455667788 if ctype is ctypes.c_uint64 else 0x11)
        answer = [memory.read_obj(aligned), memory.read_obj_unaligned(place, ctype)]
        memory.write_obj_unaligned(place, ctype, 7)
        answer.append(memory.read_obj_unaligned(place, ctype))
        if ctype is ctypes.c_uint64:
            try:
                answer.append(memory.read_atomic(aligned))
            except AtomicWidthUnsupported as refused:  # 8 bytes, on a host without them
                answer.append(str(refused))
        return answer
    except GuestMemoryError as error:
        return type(error).__name__

order = (Fake, ctypes.c_uint64) if sys.argv[1] == "fake first" else (ctypes.c_uint64, Fake)
# Labels by identity: a dict keyed by these types would merge them.
answers = {("fake" if ctype is Fake else "real"): [use(ctype), use(ctype)] for ctype in order}
answers["sly"] = [use(Sly), use(Sly)]
answers["later"] = [use(Later)]
Plain.__eq__ = lambda cls, other: other is ctypes.c_uint64 or cls is other
Plain.__hash__ = lambda cls: hash(ctypes.c_uint64)
answers["later"].append(use(Later))
answers["unhashed"] = [use(Unhashed)]
answers["real again"] = [use(ctypes.c_uint64)]
print(json.dumps(answers))
"""


@pytest.mark.parametrize("path", ["compiled", "pure"])
@pytest.mark.parametrize("order", ["fake first", "real first"])
def test_a_type_whose_metaclass_lies_about_equality_poisons_nothing(order: str,
                                                                    path: str) -> None:
    """Every cache of layouts is keyed by the type. A ctypes type whose metaclass claims
    to equal c_uint64 (same hash, == True) is refused — cold and warm, whichever type is
    seen first, whether its metaclass hides the lie from attribute lookups, tells it only
    after the type was first seen, or has a hash that raises: only ctypes' own metaclasses
    are accepted — and c_uint64 keeps its own 8-byte layout on both paths (its atomic
    read too: the value, or on a host without 8-byte atomics their refusal, which names
    the 8 bytes, where a poisoned cache would read one byte)."""
    # The control: a type-keyed dict is fooled by such a type (the threat is real).
    control = run_python("-c", LYING_TYPE_PROGRAM.replace(
        "print(json.dumps", "print({ctypes.c_uint64: 'real'}.get(Fake)); sys.exit(0)\nprint("),
        "fake first")
    assert control.stdout.strip() == "real", control.stdout + control.stderr
    environment = {"VM_MEMORY_PURE": "1"} if path == "pure" else {}
    result = run_python("-c", LYING_TYPE_PROGRAM, order, environment=environment)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    refused = ["NotByteValued", "NotByteValued"]
    assert answers["fake"] == answers["sly"] == answers["later"] == refused, answers
    assert answers["unhashed"] == ["NotByteValued"], answers
    atomic = 7 if EIGHT_BYTE_REFUSAL is None else EIGHT_BYTE_REFUSAL
    whole = [0x1122334455667788, 0x1122334455667788, 7, atomic]
    assert answers["real"] == [whole, whole] and answers["real again"] == [whole], answers


COPY_PROGRAM: Final = """
import copy, json, pickle
from vm_memory import GuestAddress, GuestMemoryMmap

memory = GuestMemoryMmap.from_ranges([(GuestAddress(0x1000), 0x1000)])
answers = {}
for name, attempt in [("copy", copy.copy), ("deepcopy", copy.deepcopy),
                      ("pickle", pickle.dumps),
                      ("init again", lambda memory: memory.__init__([]))]:
    try:
        attempt(memory)
        answers[name] = "accepted"
    except (TypeError, AttributeError) as error:
        answers[name] = [type(error).__name__, str(error)]
answers["regions"] = memory.num_regions()
region = memory.regions()[0]
for name, attempt in [("region copy", copy.copy), ("region pickle", pickle.dumps),
                      ("region init again", lambda region: region.__init__(
                          region.mapping, GuestAddress(0x5000)))]:
    try:
        attempt(region)
        answers[name] = "accepted"
    except (TypeError, AttributeError) as error:
        answers[name] = type(error).__name__
answers["region start"] = region.start_value
answers["read"] = memory.read_bytes(GuestAddress(0x1000), 1).hex()
print(json.dumps(answers))
"""


@pytest.mark.parametrize("path", ["compiled", "pure"])
def test_a_memory_cannot_be_copied_pickled_or_initialised_again(path: str) -> None:
    """A copy would be a memory (or a placement) the lifetime registry does not know (so
    a mapping's close would not count it), and `__init__` again would change an immutable
    memory's regions or move a region a memory holds: both paths refuse alike, and the
    memory keeps its regions where they were."""
    environment = {"VM_MEMORY_PURE": "1"} if path == "pure" else {}
    result = run_python("-c", COPY_PROGRAM, environment=environment)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    refused = ["TypeError", "cannot pickle 'GuestMemoryMmap' object"]
    assert answers == {"copy": refused, "deepcopy": refused, "pickle": refused,
                       "init again": ["AttributeError",
                                      "a memory's regions are fixed at construction"],
                       "regions": 1, "region copy": "TypeError", "region pickle": "TypeError",
                       "region init again": "AttributeError", "region start": 0x1000,
                       "read": "00"}, answers


def test_a_regions_typed_views_cannot_be_replaced() -> None:
    """The aligned fast paths index a region's typed views directly: assigning other
    views (over another buffer) or adding one is refused, and reads still see the guest."""
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0x1000), 0x1000)])
    address = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(0x1000))
    memory.write_obj(address, 5)
    assert memory.read_obj(address) == 5  # the typed view exists now
    region = memory.regions()[0]
    secret = bytearray(b"SECRET!!")
    with pytest.raises(AttributeError, match="fixed at construction"):
        region.typed_views = {"I": memoryview(secret).cast("I")}
    with pytest.raises(TypeError):
        region.typed_views["I"] = memoryview(secret).cast("I")  # type: ignore[index]
    assert memory.read_obj(address) == 5
    memory.write_obj(address, 6)
    assert secret == bytearray(b"SECRET!!") and memory.read_obj(address) == 6
