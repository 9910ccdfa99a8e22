"""Every bad input to the atomic operations, each refused with its typed error and no
change to memory; whatever could crash the interpreter is tried in a child process.

A wrong implementation of these refusals does not raise, it dies: a store through
libatomic to a read-only mapping is a SIGSEGV of the whole interpreter. So each case
runs in `python -c` and the test checks that the child exited normally (return code 0,
not -11) before looking at what it reported. Memory is compared before and after each
attempt through the memfd itself (`os.pread`), not through the library under test.
Pure-Python refusals (the checked constructors) run in this process.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from ctypes import c_bool, c_int8, c_int64, c_uint8, c_uint16, c_uint32, c_uint64
from pathlib import Path
from typing import Any, Final

import pytest
from host_assumptions import EIGHT_BYTE_REFUSAL, needs_8_byte_atomics
from support import run_python, unavailable

from vm_memory import (
    AddressOutOfRange,
    AlignedGuestAddress,
    GuestAddress,
    MisalignedAddress,
)

MISSING_LIBRARY: Final = "/nonexistent/vm-memory-test/libatomic.so.1"


def pattern(size: int) -> bytes:
    """The bytes every child fills its memory with: no two neighbours alike."""
    return bytes((index * 37 + 11) % 256 for index in range(size))


PRELUDE: Final = textwrap.dedent('''
    import ctypes, json, os, sys
    from ctypes import *
    from vm_memory import *

    PAGE = 4096
    results = {}

    def pattern(size):
        return bytes((index * 37 + 11) % 256 for index in range(size))

    def memfd_region(start, size, read_only=False, data=None):
        """A region backed by a new memfd holding `data` (default: the pattern)."""
        fd = os.memfd_create("vm-memory-test")
        os.write(fd, pattern(size) if data is None else data)
        region = GuestRegionMmap(MmapRegion.from_file(fd, size, read_only=read_only),
                                 GuestAddress(start))
        os.close(fd)
        return region

    class Device:
        """A device model for DeviceRegion: a byte array."""
        def __init__(self, size):
            self.data = bytearray(pattern(size))
        def read(self, offset, size):
            return bytes(self.data[offset:offset + size])
        def write(self, offset, data):
            self.data[offset:offset + len(data)] = data

    def snapshot(memory):
        """The memory's bytes, read through the memfds (or a device model's own array),
        not through the library."""
        return b"".join(
            bytes(region.device.data) if isinstance(region, DeviceRegion)
            else os.pread(region.fd, region.length, region.file_offset)
            if isinstance(region, FileRegion)
            else os.pread(region.mapping.fd, region.length, region.mapping.file_offset)
            for region in memory.regions())

    def attempt(name, memory, call):
        before = snapshot(memory)
        try:
            value = call()
        except Exception as error:
            outcome = {"raised": type(error).__name__, "message": str(error)}
        else:
            outcome = {"raised": None, "value": value}
        outcome["unchanged"] = snapshot(memory) == before
        results[name] = outcome

    def stores(memory, address, value=1, expected=0, bool_type=False):
        """name -> call, for every atomic operation that writes."""
        operations = {
            "write_atomic": lambda: memory.write_atomic(address, value),
            "swap": lambda: memory.swap(address, value),
            "compare_exchange": lambda: memory.compare_exchange(address, expected, value),
            "fetch_and": lambda: memory.fetch_and(address, value),
            "fetch_or": lambda: memory.fetch_or(address, value),
            "fetch_xor": lambda: memory.fetch_xor(address, value),
        }
        if not bool_type:
            operations["fetch_add"] = lambda: memory.fetch_add(address, value)
            operations["fetch_sub"] = lambda: memory.fetch_sub(address, value)
        return operations

    def every_operation(memory, address, value=1, expected=0, bool_type=False):
        operations = {"read_atomic": lambda: memory.read_atomic(address)}
        operations.update(stores(memory, address, value, expected, bool_type))
        return operations
''')


def run_child(body: str, **environment: str) -> dict[str, Any]:
    """Run PRELUDE + body in a fresh interpreter; it must exit normally. Its results."""
    code = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(results))\n"
    child = run_python("-c", code, environment=environment)
    assert child.returncode == 0, (
        f"the child did not exit normally (return code {child.returncode}; -11 is "
        f"SIGSEGV):\n{child.stdout}\n{child.stderr}")
    results: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    assert results, "the child tried nothing"
    return results


def assert_all_refused(results: dict[str, Any], error: str | tuple[str, ...],
                       *, expected_count: int) -> None:
    """Every attempt raised `error` (one of them) and left memory exactly as it was."""
    errors = (error,) if isinstance(error, str) else error
    wrong = {name: outcome for name, outcome in results.items()
             if outcome["raised"] not in errors or not outcome["unchanged"]}
    assert not wrong, f"not refused with {errors} and memory unchanged: {wrong}"
    assert len(results) == expected_count, sorted(results)


# ---- Read-only regions -----------------------------------------------------------------

READ_ONLY_TYPES: Final = ("c_uint8", "c_int8", "c_uint16", "c_int16", "c_uint32", "c_int32",
                          "c_uint64", "c_int64", "c_size_t", "c_long", "c_bool")
BOOL_OFFSET: Final = 0x80


@needs_8_byte_atomics
def test_read_only_region_refuses_atomic_stores_without_touching_memory() -> None:
    """Every store, swap, compare_exchange (matching or not) and fetch_* on a read-only
    mapping raises ReadOnlyRegion, for every width, and nothing is written; the plain
    stores too. The writable region next to it still takes atomic stores."""
    results = run_child(f'''
        data = bytearray(pattern(PAGE))
        data[{BOOL_OFFSET}] = 1
        memory = GuestMemoryMmap.from_regions([
            memfd_region(0, PAGE, read_only=True, data=bytes(data)),
            memfd_region(PAGE, PAGE)])
        for name in {READ_ONLY_TYPES!r}:
            ctype = getattr(ctypes, name)
            is_bool = ctype is c_bool
            offset = {BOOL_OFFSET} if is_bool else 0x40
            address = AlignedGuestAddress.new(ctype, GuestAddress(offset))
            current = memory.read_atomic(address)
            for operation, call in stores(memory, address, value=1, expected=current,
                                          bool_type=is_bool).items():
                attempt(f"{{name}} {{operation}} (expected matches)", memory, call)
            attempt(f"{{name}} compare_exchange (expected differs)", memory,
                    lambda: memory.compare_exchange(address, 0 if current else 1, 1))
        u64 = AlignedGuestAddress.new(c_uint64, GuestAddress(0x40))
        attempt("write_obj", memory, lambda: memory.write_obj(u64, 1))
        attempt("write_slice", memory, lambda: memory.write_slice(GuestAddress(0x40), b"x"))
        attempt("write", memory, lambda: memory.write(GuestAddress(0x40), b"x"))
        attempt("write_obj_unaligned", memory,
                lambda: memory.write_obj_unaligned(GuestAddress(0x41), c_uint64, 1))
        attempt("write_slice across into the read-only region", memory,
                lambda: memory.write_slice(GuestAddress(PAGE - 4), b"12345678"))
    ''')
    per_type = 8 + 1  # stores() of a non-bool type + the mismatching compare_exchange
    expected_count = (len(READ_ONLY_TYPES) - 1) * per_type + (per_type - 2) + 5
    assert_all_refused(results, "ReadOnlyRegion", expected_count=expected_count)


@needs_8_byte_atomics
def test_read_only_region_allows_atomic_loads() -> None:
    """read_atomic of every width and load ordering on a read-only mapping returns the
    bytes there; beside it, a writable region still takes atomic read-modify-writes."""
    results = run_child('''
        memory = GuestMemoryMmap.from_regions([
            memfd_region(0, PAGE, read_only=True),
            memfd_region(PAGE, PAGE)])
        for name in ("c_uint8", "c_uint16", "c_uint32", "c_uint64", "c_int64"):
            address = AlignedGuestAddress.new(getattr(ctypes, name), GuestAddress(0x40))
            for order in (Ordering.RELAXED, Ordering.ACQUIRE, Ordering.SEQ_CST):
                attempt(f"{name} {order.name}", memory,
                        lambda: memory.read_atomic(address, order))
        writable = AlignedGuestAddress.new(c_uint64, GuestAddress(PAGE + 0x40))
        attempt("writable fetch_add", memory, lambda: memory.fetch_add(writable, 5))
        attempt("writable read_atomic", memory, lambda: memory.read_atomic(writable))
    ''')
    data = pattern(4096)
    widths = {"c_uint8": (1, False), "c_uint16": (2, False), "c_uint32": (4, False),
              "c_uint64": (8, False), "c_int64": (8, True)}
    for name, (size, signed) in widths.items():
        expected = int.from_bytes(data[0x40:0x40 + size], sys.byteorder, signed=signed)
        for order in ("RELAXED", "ACQUIRE", "SEQ_CST"):
            outcome = results.pop(f"{name} {order}")
            assert outcome == {"raised": None, "value": expected, "unchanged": True}, name
    before = int.from_bytes(data[0x40:0x48], sys.byteorder)
    fetched = results.pop("writable fetch_add")
    assert (fetched["raised"], fetched["value"], fetched["unchanged"]) == (None, before, False)
    assert results.pop("writable read_atomic")["value"] == before + 5
    assert not results


# ---- libatomic missing ------------------------------------------------------------------


MISSING_LIBATOMIC_PROGRAM: Final = '''
        memory = GuestMemoryMmap.from_regions([memfd_region(0, PAGE)])
        for name in ("c_uint32", "c_uint64", "c_bool"):
            address = AlignedGuestAddress.new(getattr(ctypes, name), GuestAddress(0x40))
            for operation, call in every_operation(memory, address,
                                                   bool_type=name == "c_bool").items():
                attempt(f"{name} {operation}", memory, call)
        attempt("read_atomic again", memory,
                lambda: memory.read_atomic(AlignedGuestAddress.new(c_uint32, GuestAddress(0x40))))
        u64 = AlignedGuestAddress.new(c_uint64, GuestAddress(0x100))
        memory.write_slice(GuestAddress(0x200), b"still works")
        memory.write_obj(u64, 0x1122334455667788)
        plain = {
            "read_bytes": memory.read_bytes(GuestAddress(0x200), 11).decode(),
            "read_obj": memory.read_obj(u64),
            "read_obj_unaligned": memory.read_obj_unaligned(GuestAddress(0x101), c_uint32),
            "pread": os.pread(memory.regions()[0].mapping.fd, 8, 0x100).hex(),
        }
        results["plain"] = plain
    '''


def test_missing_libatomic_fails_only_atomics_and_names_the_package() -> None:
    """On the pure path (mmap + ctypes + libatomic), with the atomic library unloadable,
    each atomic call raises AtomicLibraryMissing naming `libatomic1` (again on a second
    call), memory is untouched, and plain access keeps working in the same process."""
    results = run_child(MISSING_LIBATOMIC_PROGRAM, VM_MEMORY_LIBATOMIC=MISSING_LIBRARY,
                        VM_MEMORY_PURE="1")
    plain = results.pop("plain")
    stored = (0x1122334455667788).to_bytes(8, sys.byteorder)
    assert plain == {
        "read_bytes": "still works",
        "read_obj": 0x1122334455667788,
        "read_obj_unaligned": int.from_bytes(stored[1:5], sys.byteorder),
        "pread": stored.hex(),
    }
    assert_all_refused(results, "AtomicLibraryMissing", expected_count=9 + 9 + 7 + 1)
    for outcome in results.values():
        assert "libatomic1" in outcome["message"], outcome["message"]
        assert MISSING_LIBRARY in outcome["message"], outcome["message"]


@pytest.mark.parametrize("library", [MISSING_LIBRARY, "libc.so.6"],
                         ids=["missing", "without the lock-free probe"])
def test_device_atomics_need_no_libatomic_and_look_for_it_once(library: str) -> None:
    """On the pure path with no usable libatomic (none at all, or a library without
    `__atomic_is_lock_free`), a device region's atomics still work (they need no
    hardware instruction), the library is looked for once, not at every call, and host
    memory's atomics raise the typed `AtomicLibraryMissing`."""
    results = run_child('''
        loads = []
        real_cdll = ctypes.CDLL
        def counting_cdll(name, *args, **kwargs):
            loads.append(name)
            return real_cdll(name, *args, **kwargs)
        ctypes.CDLL = counting_cdll
        device = GuestMemory([DeviceRegion(Device(PAGE), GuestAddress(0), PAGE)])
        counter = AlignedGuestAddress.new(c_uint32, GuestAddress(0x40))
        device.write_atomic(counter, 0)
        for _ in range(100):
            device.fetch_add(counter, 1)
        results["device"] = {"value": device.read_atomic(counter),
                             "loads": loads.count(os.environ["VM_MEMORY_LIBATOMIC"])}
        host = GuestMemoryMmap.from_regions([memfd_region(0, PAGE)])
        attempt("host fetch_add", host, lambda: host.fetch_add(counter, 1))
    ''', VM_MEMORY_LIBATOMIC=library, VM_MEMORY_PURE="1")
    assert results.pop("device") == {"value": 100, "loads": 1}
    assert_all_refused(results, "AtomicLibraryMissing", expected_count=1)


def test_the_compiled_path_needs_no_libatomic(compiled_path: object) -> None:
    """The compiled path inlines its atomics (compiler builtins): with libatomic
    unloadable every atomic operation on host memory still runs, and plain access too.
    On a host without 8-byte atomics the c_uint64 ones are refused as they are with
    libatomic (AtomicWidthUnsupported, memory unchanged), never a missing library."""
    results = run_child(MISSING_LIBATOMIC_PROGRAM, VM_MEMORY_LIBATOMIC=MISSING_LIBRARY)
    results.pop("plain")
    assert len(results) == 9 + 9 + 7 + 1
    if EIGHT_BYTE_REFUSAL is not None:
        eight = {name: results.pop(name) for name in list(results)
                 if name.startswith("c_uint64 ")}
        assert len(eight) == 9
        assert_all_refused(eight, "AtomicWidthUnsupported", expected_count=9)
        assert {outcome["message"] for outcome in eight.values()} == {EIGHT_BYTE_REFUSAL}
    assert all(outcome["raised"] is None for outcome in results.values()), results


# ---- Width not lock-free: a real libatomic whose lock-free probe says no for 8 bytes ----

SHIM_SOURCE: Final = r"""
#include <stdbool.h>
#include <stddef.h>
/* The probe vm_memory asks; every other __atomic_* symbol comes from libatomic. */
bool probe(size_t size, const volatile void *pointer) __asm__("__atomic_is_lock_free");
bool probe(size_t size, const volatile void *pointer) { (void)pointer; return size < 8; }
"""


@pytest.fixture(scope="module")
def not_lock_free_for_8_bytes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A libatomic stand-in reporting 8-byte accesses as not lock-free."""
    # The compiler must build for this interpreter: on a Debian port run under an
    # emulator (tests/ports), the host's cc builds for the host; a cross compiler named by
    # the interpreter's multiarch triplet builds for it.
    triplet = sysconfig.get_config_var("MULTIARCH")
    compilers = [f"{triplet}-gcc", f"{triplet.replace('i386', 'i686')}-gcc"] if triplet else []
    compiler = next(filter(None, map(shutil.which, [*compilers, "cc", "gcc"])), None)
    if compiler is None:
        unavailable("no C compiler to build the libatomic stand-in")
    directory = tmp_path_factory.mktemp("shim")
    source, library = directory / "shim.c", directory / "libatomic-shim.so"
    source.write_text(SHIM_SOURCE)
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source),
                    "-Wl,--no-as-needed", "-latomic"], check=True, capture_output=True, timeout=120)
    try:
        ctypes.CDLL(str(library))
    except OSError as error:
        unavailable(f"{compiler} builds for another architecture than this interpreter's "
                    f"({triplet}); install {triplet}-gcc: {error}")
    return library


def test_width_that_is_not_lock_free_is_refused(not_lock_free_for_8_bytes: Path) -> None:
    """On the pure path, where the host says 8 bytes are not lock-free, 8-byte atomics
    raise AtomicWidthUnsupported (never libatomic's lock-based fallback) and write
    nothing, while 4-byte atomics through the same library work. A width is the type's
    on the host, so a device region (which needs no hardware instruction) and a file
    region refuse it as host memory does: one answer on every kind (the mipsel run found
    a device region answering, and a file region refusing with AtomicAccessUnsupported).
    In a hole, every kind answers InvalidGuestAddress, as before. (The compiled path asks
    the compiler instead: see
    test_compiled_path.py::test_lock_free_widths_agree_with_libatomic.)"""
    results = run_child('''
        import tempfile
        handle = tempfile.TemporaryFile()
        handle.write(pattern(PAGE))
        handle.flush()
        memories = {
            "mmap": GuestMemoryMmap.from_regions([memfd_region(0, PAGE)]),
            "device": GuestMemory([DeviceRegion(Device(PAGE), GuestAddress(0), PAGE)]),
            "file": GuestMemory([FileRegion(handle.fileno(), GuestAddress(0), PAGE)]),
        }
        for kind, memory in memories.items():
            for where, start in (("in", 0x40), ("hole", 0x10_0000)):
                address = AlignedGuestAddress.new(c_uint64, GuestAddress(start))
                for operation, call in every_operation(memory, address).items():
                    attempt(f"{kind} {where} c_uint64 {operation}", memory, call)
            narrow = AlignedGuestAddress.new(c_uint32, GuestAddress(0x80))
            attempt(f"{kind} c_uint32 fetch_add", memory, lambda: memory.fetch_add(narrow, 1))
    ''', VM_MEMORY_LIBATOMIC=str(not_lock_free_for_8_bytes), VM_MEMORY_PURE="1")
    for kind in ("mmap", "device"):
        narrow = results.pop(f"{kind} c_uint32 fetch_add")
        assert narrow["raised"] is None and not narrow["unchanged"], (kind, narrow)
        assert narrow["value"] == int.from_bytes(pattern(4096)[0x80:0x84], sys.byteorder)
    assert_all_refused({"file": results.pop("file c_uint32 fetch_add")},
                       "AtomicAccessUnsupported", expected_count=1)
    in_hole = {name: results.pop(name) for name in list(results) if " hole " in name}
    assert_all_refused(in_hole, "InvalidGuestAddress", expected_count=3 * 9)
    assert_all_refused(results, "AtomicWidthUnsupported", expected_count=3 * 9)


# ---- Types that are not AtomicAccess ----------------------------------------------------


SWAPPED: Final = "Be" if sys.byteorder == "little" else "Le"
"""The explicit-endian types of the other byte order are ctypes' swapped types; those of
the host's order are the native types themselves at run time (and atomic)."""
NOT_ATOMIC_TYPES: Final = {
    "c_float": "c_float",
    "c_double": "c_double",
    "c_longdouble (16 bytes)": "c_longdouble",
    "c_uint64 * 2 (16 bytes)": "c_uint64 * 2",
    "Pair, a Structure of two c_uint64 (16 bytes)": "Pair",
    "Word, a Structure of one c_uint32": "Word",
    f"{SWAPPED}64": f"{SWAPPED}64",
    f"{SWAPPED}I32": f"{SWAPPED}I32",
    "c_char": "c_char",
}


def test_types_that_are_not_atomic_access_are_refused() -> None:
    """Floats, 16-byte types, aggregates, explicit big-endian and char types raise
    NotAtomicAccess from every atomic operation, before memory is touched; so does
    fetch_add/fetch_sub on c_bool."""
    results = run_child(f'''
        class Pair(Structure):
            _fields_ = [("low", c_uint64), ("high", c_uint64)]
        class Word(Structure):
            _fields_ = [("value", c_uint32)]
        memory = GuestMemoryMmap.from_regions([memfd_region(0, PAGE)])
        for label, expression in {NOT_ATOMIC_TYPES!r}.items():
            ctype = eval(expression)
            results[f"{{label}} is_atomic_access"] = {{
                "raised": "NotAtomicAccess" if not is_atomic_access(ctype) else None,
                "unchanged": True}}
            address = AlignedGuestAddress.new(ctype, GuestAddress(0x40))
            for operation, call in every_operation(memory, address).items():
                attempt(f"{{label}} {{operation}}", memory, call)
        flag = AlignedGuestAddress.new(c_bool, GuestAddress(0x90))
        attempt("c_bool fetch_add", memory, lambda: memory.fetch_add(flag, 1))
        attempt("c_bool fetch_sub", memory, lambda: memory.fetch_sub(flag, 1))
    ''')
    assert_all_refused(results, ("NotAtomicAccess", "AtomicWidthUnsupported"),
                       expected_count=len(NOT_ATOMIC_TYPES) * 10 + 2)


# ---- Invalid orderings ------------------------------------------------------------------


def test_orderings_invalid_for_the_operation_are_refused() -> None:
    """A load that releases, a store that acquires, a compare-exchange failure that
    releases, and non-Ordering values: InvalidOrdering, memory unchanged."""
    results = run_child('''
        memory = GuestMemoryMmap.from_regions([memfd_region(0, PAGE)])
        a = AlignedGuestAddress.new(c_uint64, GuestAddress(0x40))
        R = Ordering
        cases = {
            "read_atomic RELEASE": lambda: memory.read_atomic(a, R.RELEASE),
            "read_atomic ACQ_REL": lambda: memory.read_atomic(a, R.ACQ_REL),
            "write_atomic ACQUIRE": lambda: memory.write_atomic(a, 1, R.ACQUIRE),
            "write_atomic ACQ_REL": lambda: memory.write_atomic(a, 1, R.ACQ_REL),
            "compare_exchange failure RELEASE":
                lambda: memory.compare_exchange(a, 0, 1, R.SEQ_CST, R.RELEASE),
            "compare_exchange failure ACQ_REL":
                lambda: memory.compare_exchange(a, 0, 1, R.ACQ_REL, R.ACQ_REL),
        }
        for bad in ("SEQ_CST", None, 1, 7, -1, 2.5):
            cases.update({
                f"read_atomic {bad!r}": lambda bad=bad: memory.read_atomic(a, bad),
                f"write_atomic {bad!r}": lambda bad=bad: memory.write_atomic(a, 1, bad),
                f"swap {bad!r}": lambda bad=bad: memory.swap(a, 1, bad),
                f"fetch_add {bad!r}": lambda bad=bad: memory.fetch_add(a, 1, bad),
                f"fetch_xor {bad!r}": lambda bad=bad: memory.fetch_xor(a, 1, bad),
                f"compare_exchange success {bad!r}":
                    lambda bad=bad: memory.compare_exchange(a, 0, 1, bad, R.RELAXED),
                f"compare_exchange failure {bad!r}":
                    lambda bad=bad: memory.compare_exchange(a, 0, 1, R.SEQ_CST, bad),
            })
        for name, call in cases.items():
            attempt(name, memory, call)
    ''')
    assert_all_refused(results, "InvalidOrdering", expected_count=6 + 6 * 7)


def test_plain_int_orderings_are_refused_like_any_non_member() -> None:
    """An int equal to a valid C ordering is still not an `Ordering`: every operation
    must treat it the same way (swap and compare_exchange refuse it)."""
    results = run_child('''
        memory = GuestMemoryMmap.from_regions([memfd_region(0, PAGE)])
        a = AlignedGuestAddress.new(c_uint64, GuestAddress(0x40))
        for bad in (5, 0, 0.0):
            cases = {
                f"read_atomic {bad!r}": lambda: memory.read_atomic(a, bad),
                f"write_atomic {bad!r}": lambda: memory.write_atomic(a, 1, bad),
                f"swap {bad!r}": lambda: memory.swap(a, 1, bad),
                f"fetch_add {bad!r}": lambda: memory.fetch_add(a, 1, bad),
                f"fetch_or {bad!r}": lambda: memory.fetch_or(a, 1, bad),
                f"compare_exchange {bad!r}":
                    lambda: memory.compare_exchange(a, 0, 1, bad, Ordering.RELAXED),
            }
            for name, call in cases.items():
                attempt(name, memory, call)
    ''')
    assert_all_refused(results, "InvalidOrdering", expected_count=3 * 6)


# ---- Values out of range ----------------------------------------------------------------


def test_values_out_of_the_types_range_are_refused() -> None:
    """Values that do not fit the type raise ValueOutOfRange (non-integers
    InvalidArgumentType, a typed TypeError)
    from every operation taking a value, before anything is written."""
    results = run_child('''
        memory = GuestMemoryMmap.from_regions([memfd_region(0, PAGE)])
        bad_values = {
            "c_uint8": (256, -1), "c_int8": (128, -129), "c_uint16": (1 << 16, -1),
            "c_int16": (1 << 15, -(1 << 15) - 1), "c_uint32": (1 << 32, -1),
            "c_int32": (1 << 31, -(1 << 31) - 1), "c_uint64": (1 << 64, -1),
            "c_int64": (1 << 63, -(1 << 63) - 1), "c_bool": (2, -1),
        }
        for name, values in bad_values.items():
            ctype = getattr(ctypes, name)
            address = AlignedGuestAddress.new(ctype, GuestAddress(0x40))
            for value in values:
                for operation, call in stores(memory, address, value=value,
                                              bool_type=ctype is c_bool).items():
                    attempt(f"{name} {operation} {value}", memory, call)
                attempt(f"{name} compare_exchange expected={value}", memory,
                        lambda: memory.compare_exchange(address, value, 0))
        wide = AlignedGuestAddress.new(c_uint64, GuestAddress(0x40))
        narrow = AlignedGuestAddress.new(c_uint32, GuestAddress(0x40))
        for value in (1.0, "1", None):
            attempt(f"c_uint64 write_atomic {value!r}", memory,
                    lambda: memory.write_atomic(wide, value))
            attempt(f"c_uint32 fetch_add {value!r}", memory,
                    lambda: memory.fetch_add(narrow, value))
    ''')
    typed = {name: outcome for name, outcome in results.items() if "'" in name
             or "1.0" in name or "None" in name}
    ranged = {name: outcome for name, outcome in results.items() if name not in typed}
    assert_all_refused(ranged, "ValueOutOfRange", expected_count=8 * 2 * 9 + 2 * 7)
    assert_all_refused(typed, "InvalidArgumentType", expected_count=6)


# ---- Addresses: host misalignment, region ends, holes -----------------------------------


@needs_8_byte_atomics
def test_guest_aligned_address_misaligned_on_the_host_is_refused() -> None:
    """A region placed at a guest address that is not page-aligned puts an aligned
    guest address on a misaligned host address: MisalignedAddress (space "host")."""
    results = run_child('''
        memory = GuestMemoryMmap.from_regions([memfd_region(0x1004, PAGE)])
        a = AlignedGuestAddress.new(c_uint64, GuestAddress(0x1008))  # host offset 4: misaligned
        for operation, call in every_operation(memory, a).items():
            attempt(operation, memory, call)
    ''')
    assert_all_refused(results, "MisalignedAddress", expected_count=9)
    for outcome in results.values():
        assert outcome["message"].startswith("host address"), outcome["message"]


def test_aligned_access_crossing_a_region_end_is_refused() -> None:
    """A region of 4100 bytes followed by one at 4100: the u64 at 4096 would cross
    from one into the other. Atomic accesses never cross a region: InvalidRange."""
    results = run_child('''
        memory = GuestMemoryMmap.from_regions([memfd_region(0, PAGE + 4),
                                               memfd_region(PAGE + 4, PAGE)])
        a = AlignedGuestAddress.new(c_uint64, GuestAddress(PAGE))
        for operation, call in every_operation(memory, a).items():
            attempt(operation, memory, call)
    ''')
    assert_all_refused(results, "InvalidRange", expected_count=9)


def test_atomic_access_in_a_hole_is_refused() -> None:
    """Below, between and above the regions, up to the top of the address space:
    InvalidGuestAddress, and the regions around are unchanged."""
    results = run_child('''
        memory = GuestMemoryMmap.from_regions([memfd_region(PAGE, PAGE),
                                               memfd_region(3 * PAGE, PAGE)])
        for where in (0, PAGE - 8, 2 * PAGE, 3 * PAGE - 8, 4 * PAGE, 2**64 - 8):
            a = AlignedGuestAddress.new(c_uint64, GuestAddress(where))
            for operation, call in every_operation(memory, a).items():
                attempt(f"{where:#x} {operation}", memory, call)
    ''')
    assert_all_refused(results, "InvalidGuestAddress", expected_count=6 * 9)


# ---- The checked constructors (pure Python, in this process) ----------------------------


@pytest.mark.parametrize(("ctype", "address", "alignment"), [
    (c_uint16, 1, 2), (c_uint32, 2, 4), (c_uint32, 0x1001, 4), (c_uint64, 4, 8),
    (c_int64, 0x1234, 8), (c_uint64, 2**64 - 4, 8),
])
def test_misaligned_constructor_is_refused(ctype: type[Any], address: int,
                                           alignment: int) -> None:
    with pytest.raises(MisalignedAddress) as raised:
        AlignedGuestAddress.new(ctype, GuestAddress(address))
    assert (raised.value.address, raised.value.alignment) == (address, alignment)
    assert raised.value.space == "guest"
    assert AlignedGuestAddress.try_new(ctype, GuestAddress(address)) is None
    down = AlignedGuestAddress.align_down(ctype, GuestAddress(address))
    assert down.raw_value() == address & -alignment


@pytest.mark.parametrize("address", [2**64, 2**64 + 8, -8, -1])
def test_constructor_outside_the_address_space_is_refused(address: int) -> None:
    for ctype in (c_uint8, c_bool, c_uint64):
        with pytest.raises(AddressOutOfRange):
            AlignedGuestAddress.new(ctype, GuestAddress(address))
        with pytest.raises(AddressOutOfRange):
            AlignedGuestAddress.try_new(ctype, GuestAddress(address))


def test_aligned_constructors_accept_aligned_addresses() -> None:
    """The other side of the refusals: aligned addresses, up to 2**64 - 8, are taken."""
    for ctype, size in ((c_uint8, 1), (c_uint16, 2), (c_uint32, 4), (c_uint64, 8),
                        (c_int8, 1), (c_bool, 1)):
        top = 2**64 - size
        assert AlignedGuestAddress.new(ctype, GuestAddress(top)).raw_value() == top
        assert AlignedGuestAddress.new(ctype, GuestAddress(size * 3)).addr == GuestAddress(
            size * 3)


def test_direct_construction_is_refused() -> None:
    """Calling the class is refused at run time too (the type checkers refuse it)."""
    results = run_child('''
        for name, call in {
            "no arguments": lambda: AlignedGuestAddress(),
            "type and address": lambda: AlignedGuestAddress(c_uint64, GuestAddress(8)),
            "subscripted": lambda: AlignedGuestAddress[c_uint64](GuestAddress(8)),
        }.items():
            try:
                call()
            except Exception as error:
                results[name] = {"raised": type(error).__name__, "unchanged": True}
            else:
                results[name] = {"raised": None, "unchanged": True}
    ''')
    assert_all_refused(results, "AlignedAddressConstruction", expected_count=3)
