"""One answer per call: every public access, cold and warm, on every region kind.

A fast path that admits what the general path refuses makes the answer depend on which
region the previous call hit. So each generated call — with hostile arguments among the
honest ones: plain ints for orderings, bools, NumPy integers, int subclasses that lie,
floats, strings, out-of-range values, addresses in holes, across ends and in read-only
regions — runs four ways on each kind of region (anonymous mmap, sealed memfd, a device
model, a file reached with pread/pwrite):

- cold: a fresh memory, and the atomic fast paths' caches emptied;
- warm: a fresh memory after the same method succeeded on the same type in the same
  region, and a read at the call's own address (so the last-region guess, the compiled
  region cache's slot of the call's page and every cache point at the call's region).

Cold and warm must give the same result or the same error class, and leave the same
bytes. Across kinds, every answer must be the same, except that a file region refuses
every atomic operation that another kind performs (`AtomicAccessUnsupported`).

Across access paths: the same calls run in a child process on the other path (pure when
this process runs the compiled one, compiled when the pure one is forced), call by call,
cold and warm, on every kind; every answer — results, bytes left and refusals — must be
the same as this process's (`tests/path_oracle.py`).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ByteDevice

from vm_memory import (
    AlignedGuestAddress,
    DeviceRegion,
    FileRegion,
    GuestAddress,
    GuestMemory,
    GuestMemoryRegion,
    GuestRegionMmap,
    Le32,
    MmapRegion,
    Ordering,
    access_path,
)
from vm_memory import guest_memory as guest_memory_module
from vm_memory.aligned_address import alignment_info
from vm_memory.atomic_operations import OPERATIONS

PAGE: Final = 0x1000
STARTS: Final = (0x0, 0x2000)
"""Two adjacent writable regions of two pages each, then a hole."""
READ_ONLY_START: Final = 0x10000
KINDS: Final = ("mmap", "memfd", "device", "file")
ATOMIC_METHODS: Final = ("read_atomic", "write_atomic", "swap", "compare_exchange",
                         "fetch_add", "fetch_sub", "fetch_and", "fetch_or", "fetch_xor")


class Header(ctypes.Structure):
    _fields_ = (("magic", Le32), ("flags", ctypes.c_uint16), ("count", ctypes.c_uint16))


class Liar(int):
    """An int whose operators lie: every remainder is 0, it equals everything."""

    def __mod__(self, other: object) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = int.__hash__


PLANTED: Final = 0x5EED
"""What a look-alike's planted atomic entry answers (a path that calls it says so)."""
PLANTED_CALLS: list[tuple[object, ...]] = []


def planted(*arguments: object) -> int:
    """The function a look-alike's `_info` offers the atomic fast paths."""
    PLANTED_CALLS.append(arguments)
    return PLANTED


class PlantedEntries:
    """A look-alike's atomic entries: for each operation, the shape the fast paths
    unpack, with `planted` as the function."""

    def __getitem__(self, index: int) -> object:
        shape = OPERATIONS[list(OPERATIONS)[index]].shape
        if shape == "load":
            return planted
        if shape == "compare-exchange":
            return planted, ctypes.c_uint64, 0, 2**64 - 1
        return planted, 0, 2**64 - 1


class PlantedInfo:
    """What an aligned address's `_info` holds, copied from `ctype`'s real one, with
    planted atomic entries."""

    def __init__(self, ctype: Any) -> None:
        real = alignment_info(ctype)
        self.ctype, self.layout, self.alignment = real.ctype, real.layout, real.alignment
        self.atomics = PlantedEntries()


class LookAlike:
    """Not an address, but answering like one: an `AlignedGuestAddress` (or, `plain`, a
    `GuestAddress`) by `__class__` and isinstance, with the private fields the access
    paths read — a value the checked constructors would refuse (unaligned or past
    2**64) and an `_info` whose atomic entries are `planted`. Every path must refuse it,
    cold and warm: trusting its attributes would let it choose the memory and the code."""

    __slots__ = ("_guest_value", "_info", "ctype", "plain")

    def __init__(self, ctype: Any, value: int, *, plain: bool = False) -> None:
        self.ctype, self.plain = ctype, plain
        self._guest_value = value
        self._info = PlantedInfo(ctype)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # pyright: ignore[reportIncompatibleMethodOverride]
        return GuestAddress if self.plain else AlignedGuestAddress

    def __reduce__(self) -> tuple[Any, ...]:
        return (_look_alike, (self.ctype, self._guest_value, self.plain))

    def __repr__(self) -> str:
        return f"LookAlike({self.ctype.__name__}, {self._guest_value:#x}, plain={self.plain})"


def _look_alike(ctype: Any, value: int, plain: bool) -> LookAlike:
    return LookAlike(ctype, value, plain=plain)


class OrderingLike:
    """Not an Ordering, but an `Ordering` by `__class__`, equal to every member and
    converting to SEQ_CST's C value: refused as a plain value is."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # pyright: ignore[reportIncompatibleMethodOverride]
        return Ordering

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__

    def __index__(self) -> int:
        return int(Ordering.SEQ_CST)

    def __reduce__(self) -> tuple[Any, ...]:
        return (OrderingLike, ())  # pickle would check the class `__class__` claims

    def __repr__(self) -> str:
        return "OrderingLike()"


class IntLike:
    """Not an int, but an `int` by `__class__`, inside every range by comparison, and
    2**40 + 3 by `operator.index`: stored as that (or refused as out of range), never
    trusted as in range."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # pyright: ignore[reportIncompatibleMethodOverride]
        return int

    def __lt__(self, other: object) -> bool:
        return True

    __le__ = __gt__ = __ge__ = __lt__

    def __index__(self) -> int:
        return 2**40 + 3

    def __reduce__(self) -> tuple[Any, ...]:
        return (IntLike, ())  # pickle would check the class `__class__` claims

    def __repr__(self) -> str:
        return "IntLike()"


CTYPES: Final = (ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64,
                 ctypes.c_int32, ctypes.c_int64, ctypes.c_bool, ctypes.c_double, Le32, Header)

HOSTILE_VALUES: Final[tuple[Any, ...]] = (
    0, 1, 2, 255, 256, -1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1, 2**64, -(2**63),
    True, False, np.int64(5), np.uint64(2**63), np.int8(-1), Liar(3), Liar(-1), 1.0, 2.5,
    "1", None, b"\x01", IntLike(),
)
ORDERINGS: Final[tuple[Any, ...]] = (*Ordering, 0, 2, 3, 4, 5, True, 2.0, None, "SEQ_CST",
                                     np.int64(5), Liar(5), OrderingLike())
OFFSETS: Final = (0, 8, 0x100, 2 * PAGE - 8, 2 * PAGE - 4, 2 * PAGE - 2, 2 * PAGE - 1,
                  2 * PAGE, 4 * PAGE - 8, 4 * PAGE - 1, 4 * PAGE, READ_ONLY_START + 8,
                  READ_ONLY_START + PAGE - 4, 2**64 - 8, 2**64 - 1)
LENGTHS: Final = (0, 1, 7, 8, 16, PAGE, 2 * PAGE + 3, 4 * PAGE + 1)


def initial(size: int, seed: int) -> bytes:
    return bytes((index * 131 + seed * 7 + 3) % 251 for index in range(size))


INITIAL: Final = initial(2 * PAGE, 0) + initial(2 * PAGE, 1) + initial(PAGE, 2)
"""Every kind's bytes before a call, as `Built.contents` reads them."""


MEMORY_CLASS: type[GuestMemory] = GuestMemory
"""The memory class `build` makes (the controls swap in one that lies)."""


@dataclass
class Built:
    memory: GuestMemory
    contents: Callable[[], bytes]


def _mapping_reader(mapping: MmapRegion) -> Callable[[], bytes]:
    return lambda: bytes(mapping.mapping[:])


def _device_reader(device: ByteDevice) -> Callable[[], bytes]:
    return lambda: bytes(device.data)


def _file_reader(fd: int, size: int) -> Callable[[], bytes]:
    return lambda: os.pread(fd, size, 0)


@contextmanager
def build(kind: str) -> Generator[Built]:
    """A memory of `kind`: two adjacent writable regions and one read-only region, with
    a way to read every byte back without the library's access paths."""
    sizes = [(start, 2 * PAGE, False) for start in STARTS] + [(READ_ONLY_START, PAGE, True)]
    readers: list[Callable[[], bytes]] = []
    regions: list[GuestMemoryRegion] = []
    with ExitStack() as files:
        for index, (start, size, read_only) in enumerate(sizes):
            data = initial(size, index)
            if kind in ("mmap", "memfd"):
                mapping = MmapRegion.anonymous(size) if kind == "mmap" else \
                    MmapRegion.memfd(size)
                mapping.mapping[:] = data
                if read_only:
                    fd = os.memfd_create("contract")
                    os.write(fd, data)
                    mapping = MmapRegion.from_file(fd, size, read_only=True)
                    os.close(fd)
                region: GuestMemoryRegion = GuestRegionMmap(mapping, GuestAddress(start))
                readers.append(_mapping_reader(mapping))
            elif kind == "device":
                device = ByteDevice(data)
                region = DeviceRegion(device, GuestAddress(start), size, read_only=read_only)
                readers.append(_device_reader(device))
            else:
                handle = files.enter_context(tempfile.TemporaryFile())
                handle.write(data)
                handle.flush()
                region = FileRegion(handle.fileno(), GuestAddress(start), size,
                                    read_only=read_only)
                readers.append(_file_reader(handle.fileno(), size))
            regions.append(region)
        yield Built(MEMORY_CLASS(regions), lambda: b"".join(read() for read in readers))


@dataclass(frozen=True)
class Call:
    method: str
    arguments: tuple[Any, ...]

    def run(self, memory: GuestMemory) -> Any:
        return getattr(memory, self.method)(*self.arguments)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis prints a failing call by its repr: its pretty-printer would take
        the look-alikes for what their `__class__` claims."""
        printer.text(repr(self))


def aligned(ctype: Any, offset: int) -> AlignedGuestAddress[Any] | GuestAddress:
    """An aligned address where one can be made, else the plain address (a wrong type
    for the aligned methods: itself a refusal to compare)."""
    made = AlignedGuestAddress.try_new(ctype, GuestAddress(offset))
    return made if made is not None else GuestAddress(offset)


@st.composite
def calls(draw: st.DrawFn) -> Call:
    ctype = draw(st.sampled_from(CTYPES))
    offset = draw(st.sampled_from(OFFSETS) | st.integers(0, 4 * PAGE))
    value = draw(st.sampled_from(HOSTILE_VALUES) | st.integers(-(2**65), 2**65))
    order = draw(st.sampled_from(ORDERINGS))
    method = draw(st.sampled_from((*ATOMIC_METHODS, "read_obj", "write_obj",
                                   "read_obj_unaligned", "write_obj_unaligned", "read_slice",
                                   "write_slice", "read", "write", "read_bytes")))
    address: Any = aligned(ctype, offset)
    if draw(st.booleans()) and method in (*ATOMIC_METHODS, "read_obj", "write_obj"):
        address = draw(st.sampled_from((GuestAddress(offset), offset, None,
                                        LookAlike(ctype, offset), LookAlike(ctype, 2**64))))
    plain: Any = GuestAddress(offset)
    if draw(st.integers(0, 7)) == 0:
        plain = LookAlike(ctype, offset, plain=draw(st.booleans()))
    length = draw(st.sampled_from(LENGTHS))
    if method == "read_atomic":
        arguments: tuple[Any, ...] = (address, order)
    elif method == "compare_exchange":
        expected = draw(st.sampled_from(HOSTILE_VALUES))
        failure = draw(st.sampled_from(ORDERINGS))
        arguments = (address, expected, value, order, failure)
    elif method in ATOMIC_METHODS:
        arguments = (address, value, order)
    elif method == "read_obj":
        arguments = (address,)
    elif method == "write_obj":
        arguments = (address, ctype() if ctype is Header and draw(st.booleans()) else value)
    elif method == "read_obj_unaligned":
        arguments = (plain, ctype)
    elif method == "write_obj_unaligned":
        arguments = (plain, ctype, value)
    elif method in ("read_slice", "read"):
        arguments = (plain, bytearray(length))
    elif method in ("write_slice", "write"):
        arguments = (plain, initial(length, 9))
    else:
        arguments = (plain, length)
    return Call(method, arguments)


def outcome(call: Call, memory: GuestMemory) -> tuple[str, str]:
    """What the call gave: ('ok', repr of the result and of any filled buffer) or
    ('error', the error class name)."""
    try:
        result = call.run(memory)
    except Exception as error:
        return "error", type(error).__name__
    buffers = [bytes(argument) for argument in call.arguments if isinstance(argument, bytearray)]
    if isinstance(result, ctypes.Structure):
        result = bytes(result)
    return "ok", repr((type(result).__name__, result, buffers))


def fresh_arguments(call: Call) -> Call:
    """The call with new destination buffers (a run fills them)."""
    return Call(call.method, tuple(bytearray(len(argument)) if isinstance(argument, bytearray)
                                   else argument for argument in call.arguments))


def empty_fast_path_caches() -> None:
    guest_memory_module.forget_fast_atomics()


def cold(kind: str, call: Call) -> tuple[tuple[str, str], bytes]:
    empty_fast_path_caches()
    with build(kind) as built:
        return outcome(fresh_arguments(call), built.memory), built.contents()


def warm(kind: str, call: Call) -> tuple[tuple[str, str], bytes]:
    """From empty caches, prime with a successful call of the same method and type in
    the call's region, then put the bytes back and run the call."""
    empty_fast_path_caches()
    with build(kind) as built:
        memory = built.memory
        primer = _primer(call)
        for _ in range(3):
            try:
                primer.run(memory)
            except Exception:  # the primer may be refused on this kind; still warm
                break
        restore(memory)
        memory.read_slice(primer.arguments[0].addr if isinstance(
            primer.arguments[0], AlignedGuestAddress) else primer.arguments[0], bytearray(1))
        target = target_value(call)
        if target < 2**64 and memory.find_region(GuestAddress(target)) is not None:
            memory.read_slice(GuestAddress(target), bytearray(1))  # the call's page too
        return outcome(fresh_arguments(call), memory), built.contents()


def target_value(call: Call) -> int:
    """The address value the call aims at (0 where its address is no address)."""
    address = call.arguments[0]
    # by type: a look-alike passes isinstance
    kind: object = type(address)  # pyright: ignore[reportUnknownVariableType]
    if kind is LookAlike:
        return int(address._guest_value)
    if kind in (AlignedGuestAddress, GuestAddress):
        return int(address.raw_value())
    return 0


def _primer(call: Call) -> Call:
    """An honest call of the same method at a valid address of the same type, in the
    region the call aims at when there is one."""
    address = call.arguments[0]
    kind: object = type(address)  # pyright: ignore[reportUnknownVariableType]
    target = target_value(call)
    region_start = next((start for start in STARTS if start <= target < start + 2 * PAGE),
                        STARTS[0])
    honest = region_start + 0x40
    if kind is AlignedGuestAddress or kind is LookAlike:
        ctype: Any = address.type if kind is AlignedGuestAddress else address.ctype  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        at: Any = AlignedGuestAddress.new(ctype, GuestAddress(honest))
        if call.method == "read_atomic":
            return Call("read_atomic", (at, Ordering.SEQ_CST))
        if call.method == "compare_exchange":
            return Call("compare_exchange", (at, 0, 0))
        if call.method in ATOMIC_METHODS:
            return Call(call.method, (at, 0))
        if call.method == "read_obj":
            return Call("read_obj", (at,))
        if call.method == "write_obj":
            return Call("write_obj", (at, ctype() if ctype is Header else 0))
    if call.method in ("read_obj_unaligned", "write_obj_unaligned"):
        ctype = call.arguments[1]
        if call.method == "read_obj_unaligned":
            return Call(call.method, (GuestAddress(honest), ctype))
        return Call(call.method, (GuestAddress(honest), ctype, ctype() if ctype is Header
                                  else 0))
    return Call("read_slice", (GuestAddress(honest), bytearray(8)))


def restore(memory: GuestMemory) -> None:
    """Put the initial bytes back (writable regions only); the caller then makes the
    primed region the last one hit again."""
    for index, start in enumerate(STARTS):
        memory.write_slice(GuestAddress(start), initial(2 * PAGE, index))


Answer = tuple[tuple[str, str], bytes]
"""What a call gave (see `outcome`) and the bytes of every region after it."""


def answers(call: Call) -> dict[str, tuple[Answer, Answer]]:
    """(cold, warm) answers of `call` on each kind of region."""
    return {kind: (cold(kind, call), warm(kind, call)) for kind in KINDS}


def check(call: Call) -> None:
    by_kind: dict[str, Answer] = {}
    for kind, (cold_answer, warm_answer) in answers(call).items():
        assert cold_answer == warm_answer, f"{kind}: cold {cold_answer[0]} != warm " \
                                           f"{warm_answer[0]} for {call}"
        by_kind[kind] = cold_answer
    reference = by_kind["mmap"]
    for kind in ("memfd", "device"):
        assert by_kind[kind] == reference, f"{kind} {by_kind[kind][0]} != mmap " \
                                           f"{reference[0]} for {call}"
    file_answer = by_kind["file"]
    if call.method in ATOMIC_METHODS and reference[0][0] == "ok":
        assert file_answer == (("error", "AtomicAccessUnsupported"), INITIAL), call
    else:
        assert file_answer == reference, f"file {file_answer[0]} != mmap {reference[0]} " \
                                         f"for {call}"


@given(calls())
def test_every_call_answers_the_same_cold_warm_and_on_every_kind(call: Call) -> None:
    check(call)


@pytest.mark.long
@settings(settings.get_profile("long"))
@given(calls())
def test_every_call_answers_the_same_long(call: Call) -> None:
    """10,000 examples (the `long` profile)."""
    check(call)


# ---- Targeted: the refusals the review found accepted warm ------------------------------


def u32(offset: int) -> AlignedGuestAddress[ctypes.c_uint32]:
    return AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(offset))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("order", [0, 2, 4, 5, True, 2.0, np.int64(5)], ids=repr)
def test_plain_values_are_not_orderings_warm_or_cold(kind: str, order: Any) -> None:
    for run in (cold, warm):
        answer, _ = run(kind, Call("read_atomic", (u32(0x40), order)))
        assert answer == ("error", "InvalidOrdering"), (run.__name__, answer)
        answer, _ = run(kind, Call("write_atomic", (u32(0x40), 1, order)))
        assert answer == ("error", "InvalidOrdering"), (run.__name__, answer)


@pytest.mark.parametrize("kind", ("mmap", "device"))
@pytest.mark.parametrize("value", [True, np.int64(7), np.uint8(200), Liar(9)], ids=repr)
def test_integer_like_values_store_the_same_warm_and_cold(kind: str, value: Any) -> None:
    """Converted once with operator.index on every path: the same value is stored."""
    answers = {run.__name__: run(kind, Call("write_atomic", (u32(0x40), value)))
               for run in (cold, warm)}
    assert answers["cold"] == answers["warm"]
    assert answers["cold"][0] == ("ok", repr(("NoneType", None, list[bytes]())))
    stored = answers["cold"][1][0x40:0x44]
    assert int.from_bytes(stored, sys.byteorder) == int(value)


def look_alike_call(method: str, address: Any) -> Call:
    """`method` on `address` with honest operands."""
    if method == "read_atomic":
        return Call(method, (address, Ordering.SEQ_CST))
    if method == "compare_exchange":
        return Call(method, (address, 0, 1))
    if method == "read_obj":
        return Call(method, (address,))
    if method in ("read_obj_unaligned", "write_obj_unaligned"):
        operands = () if method == "read_obj_unaligned" else (1,)
        return Call(method, (address, ctypes.c_uint32, *operands))
    if method in ("read_slice", "write_slice"):
        return Call(method, (address, bytearray(4) if method == "read_slice" else b"\x01" * 4))
    return Call(method, (address, 1))


ALIGNED_METHODS: Final = (*ATOMIC_METHODS, "read_obj", "write_obj")
PLAIN_METHODS: Final = ("read_obj_unaligned", "write_obj_unaligned", "read_slice",
                        "write_slice")


def refusals_of_look_alikes(kind: str) -> dict[str, list[Answer]]:
    """Each access method's cold and warm answers to a look-alike of its address type, at
    an aligned address inside a writable region."""
    PLANTED_CALLS.clear()
    found: dict[str, list[Answer]] = {}
    for method in (*ALIGNED_METHODS, *PLAIN_METHODS):
        look_alike = LookAlike(ctypes.c_uint32, 0x40, plain=method in PLAIN_METHODS)
        found[method] = [run(kind, look_alike_call(method, look_alike)) for run in (cold, warm)]
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_a_look_alike_address_is_refused_cold_and_warm(kind: str) -> None:
    """An object that answers like an address (`__class__`, isinstance, the private
    fields, an `_info` offering its own atomic function) is refused by every access
    method, cold and warm, with nothing written and its function never called."""
    look_alike = LookAlike(ctypes.c_uint32, 0x40)
    assert look_alike.__class__ is AlignedGuestAddress  # what it pretends to be
    assert isinstance(look_alike, AlignedGuestAddress)
    for method, found in refusals_of_look_alikes(kind).items():
        for moment, (answer, contents) in zip(("cold", "warm"), found, strict=True):
            assert answer == ("error", "InvalidArgumentType"), (method, moment, answer)
            assert contents == INITIAL, (method, moment)
    assert PLANTED_CALLS == []


def test_trusting_a_look_alike_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: where the access paths take the look-alike for an aligned address
    (their type check pointed at its class), the refusals above fail — on the pure path its
    planted function answers; on the compiled path (whose C check stands) the general
    path runs the access at its value."""
    monkeypatch.setattr(guest_memory_module, "AlignedGuestAddress", LookAlike)
    found = refusals_of_look_alikes("mmap")
    accepted = {method for method, pair in found.items()
                if any(answer[0] != ("error", "InvalidArgumentType") for answer in pair)}
    assert accepted == set(found), found  # the plain ones: `_guest_value` is fooled too
    if access_path().name == "pure":
        assert PLANTED_CALLS, "the pure fast path never called the planted function"
        warm_read = found["read_atomic"][1][0]
        assert warm_read == ("ok", repr(("int", PLANTED, list[bytes]()))), warm_read


class LyingMemory(GuestMemory):
    """A memory whose `read_atomic` answers 999 once it has been called: a warm fast path
    that disagrees with the general path (the controls' defect, on either access path)."""

    __slots__ = ("warm",)

    def read_atomic(self, address: Any, order: Ordering = Ordering.SEQ_CST) -> Any:
        if getattr(self, "warm", False):
            return 999
        self.warm = True
        return super().read_atomic(address, order)


def test_the_differential_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: a fast path that answers differently once warm (here a load that
    lies) makes cold and warm differ, and `check` says so."""
    monkeypatch.setattr(sys.modules[__name__], "MEMORY_CLASS", LyingMemory)
    with pytest.raises(AssertionError, match="999"):
        check(Call("read_atomic", (u32(0x40), Ordering.SEQ_CST)))


# ---- Compiled against pure, call by call ------------------------------------------------


class PathOracle:
    """A child process on the other access path answering `answers(call)` for each call."""

    def __init__(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child
        assert child.stdin is not None and child.stdout is not None
        self.requests: IO[bytes] = child.stdin
        self.replies: IO[bytes] = child.stdout
        self.path: str = pickle.load(self.replies)

    def ask(self, call: Call) -> dict[str, tuple[Answer, Answer]]:
        pickle.dump(call, self.requests)
        self.requests.flush()
        reply: dict[str, tuple[Answer, Answer]] = pickle.load(self.replies)
        return reply


ORACLE: Final = Path(__file__).resolve().parent / "path_oracle.py"


@pytest.fixture(scope="module")
def other_path() -> Iterator[PathOracle]:
    """The oracle on the path this process does not run (skipped or failed as
    `compiled_path` would be when there is no compiled path to compare with)."""
    here = access_path().name
    environment = dict(os.environ)
    if here == "compiled":
        environment["VM_MEMORY_PURE"] = "1"
    else:
        environment.pop("VM_MEMORY_PURE", None)
    child = subprocess.Popen([sys.executable, str(ORACLE)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=environment)
    try:
        oracle = PathOracle(child)
        if oracle.path == here:
            if os.environ.get("CI") == "true":
                pytest.fail("no compiled path to compare the pure path with (CI builds it)")
            pytest.skip("the compiled path is not built here: nothing to compare with")
        yield oracle
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=60)


def compare_paths(oracle: PathOracle, call: Call) -> None:
    mine, theirs = answers(call), oracle.ask(call)
    here = access_path().name
    for kind in KINDS:
        for moment, my_answer, their_answer in zip(("cold", "warm"), mine[kind], theirs[kind],
                                                   strict=True):
            assert my_answer == their_answer, (
                f"{kind}, {moment}: {here} path {my_answer[0]} != {oracle.path} path "
                f"{their_answer[0]} for {call}")


@given(calls())
def test_compiled_and_pure_paths_answer_alike(other_path: PathOracle, call: Call) -> None:
    compare_paths(other_path, call)


@pytest.mark.long
@settings(settings.get_profile("long"))
@given(calls())
def test_compiled_and_pure_paths_answer_alike_long(other_path: PathOracle,
                                                   call: Call) -> None:
    """10,000 examples (the `long` profile)."""
    compare_paths(other_path, call)


def test_the_path_comparison_can_fail(other_path: PathOracle,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: this process answering differently (a load that lies once warm) is
    caught by the comparison with the other path, which answers honestly."""
    monkeypatch.setattr(sys.modules[__name__], "MEMORY_CLASS", LyingMemory)
    with pytest.raises(AssertionError, match="999"):
        compare_paths(other_path, Call("read_atomic", (u32(0x40), Ordering.SEQ_CST)))
