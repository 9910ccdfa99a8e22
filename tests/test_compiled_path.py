"""The compiled access path: how it is chosen, what it is made of, and its lifetimes.

Which path answers is decided at import (`vm_memory.access_path()`); that both give the
same answer to every call is tests/test_contract.py's comparison, call by call. Here:
the environment variable forces the pure path, a build older than its C source is not
used, the hot methods really are the C ones, the extension inlines its atomics (no
libatomic call) on exactly the widths libatomic calls lock-free, half-built core objects
cannot exist, and the scenarios where a stale raw pointer would be a SIGSEGV run in
child processes (with a control that shows such a child does die).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from functools import partial
from pathlib import Path
from typing import Any, Final

import pytest
from host_assumptions import needs_pip
from test_lifetimes import CHILD_TIMEOUT, PRELUDE

import vm_memory
from vm_memory import (
    AlignedGuestAddress,
    GuestAddress,
    GuestMemory,
    GuestMemoryMmap,
    InvalidGuestAddress,
    MisalignedAddress,
    access_path,
)
from vm_memory.atomic_backend import libatomic_lock_free
from vm_memory.guest_memory import COMPILED_METHODS
from vm_memory.region_table import LOOKUP_SHIFT

ROOT: Final = Path(__file__).resolve().parent.parent


WARNINGS_RECORDED: Final = """
import warnings
_recording = warnings.catch_warnings(record=True)
_recorded = _recording.__enter__()
warnings.simplefilter("always")
"""


def run_child(body: str, *, pure: bool = False, path: Path = ROOT,
              warnings: bool = False) -> dict[str, Any]:
    """Run the prelude and `body` in a fresh interpreter on the compiled path (or the pure
    one); it must exit normally (not by a signal) and print its `results` as JSON. With
    `warnings`, `results["warnings"]` lists every warning from the start (the import of
    `vm_memory` included) as [category, message]."""
    code = PRELUDE + textwrap.dedent(body)
    if warnings:
        code = WARNINGS_RECORDED + code + (
            '\nresults["warnings"] = [[item.category.__name__, str(item.message)] '
            'for item in _recorded]')
    code += "\nprint(json.dumps(results))\n"
    environment = {key: value for key, value in os.environ.items()
                   if key != vm_memory.PURE_ENVIRONMENT_VARIABLE}
    environment["PYTHONPATH"] = str(path)
    if pure:
        environment[vm_memory.PURE_ENVIRONMENT_VARIABLE] = "1"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=environment, timeout=CHILD_TIMEOUT, check=False, cwd=path)
    assert child.returncode == 0, (
        f"the child died (status {child.returncode}; -11 is SIGSEGV):\n{child.stderr}")
    results: dict[str, Any] = json.loads(child.stdout.splitlines()[-1])
    return results


# ---- Which path runs ---------------------------------------------------------------------


def test_access_path_says_which_path_runs_and_why() -> None:
    path = access_path()
    assert path.name in ("compiled", "pure")
    assert str(path) == path.name
    assert path.reason


def test_the_environment_variable_forces_the_pure_path() -> None:
    """VM_MEMORY_PURE=1: the pure path, whatever is built, with no compiled base class."""
    results = run_child('''
        from vm_memory.implementation import compiled
        results["path"] = access_path().name
        results["reason"] = access_path().reason
        results["compiled_bases"] = [cls.__module__ for cls in GuestMemory.__mro__
                                     if cls.__module__ == "vm_memory._fastpath"]
        memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE)])
        memory.write_atomic(wide(8), 7)
        results["value"] = memory.fetch_add(wide(8), 1)
    ''', pure=True)
    assert results == {"path": "pure", "reason": "forced by VM_MEMORY_PURE=1",
                       "compiled_bases": [], "value": 7}


def test_the_compiled_path_runs_where_it_is_built(compiled_path: object) -> None:
    results = run_child('''
        results["path"] = access_path().name
        results["bases"] = sorted({cls.__name__ for cls in (*GuestMemory.__mro__,
                                   *GuestAddress.__mro__, *AlignedGuestAddress.__mro__,
                                   *GuestRegionMmap.__mro__)
                                   if cls.__module__ == "vm_memory._fastpath"})
    ''')
    assert results == {"path": "compiled", "bases": ["AlignedCore", "GuestAddressCore",
                                                     "MemoryCore", "RegionCore"]}


def test_a_build_older_than_its_source_is_not_used(compiled_path: object,
                                                   tmp_path: Path) -> None:
    """A copy of the package whose C source changed after the build: the pure path, saying
    why (an editable install rebuilds on `pip install -e .`)."""
    package = tmp_path / "vm_memory"
    shutil.copytree(ROOT / "vm_memory", package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    source = package / "_fastpath.c"
    source.write_text(source.read_text() + "\n/* edited after the build */\n")
    results = run_child('''
        results["path"] = access_path().name
        results["reason"] = access_path().reason
        results["module"] = GuestMemory.__module__ and sys.modules["vm_memory"].__file__
    ''', path=tmp_path, warnings=True)
    assert results["path"] == "pure"
    assert "older than vm_memory/_fastpath.c" in results["reason"]
    assert results["module"].startswith(str(tmp_path))
    # said aloud, once, on import (the control: the same child on the checkout says nothing)
    assert results["warnings"] == [["RuntimeWarning", "vm_memory runs on the pure access "
                                    "path: " + results["reason"]]]
    assert run_child('results["path"] = access_path().name', warnings=True) == \
        {"path": "compiled", "warnings": []}


def build_wheel(tmp_path: Path, compiler: str | None) -> tuple[Path, str]:
    """A wheel of this checkout built by pip (the build back-end in its own isolated
    environment, as a user's `pip install` does), with `CC` set to `compiler` if given;
    (the wheel, the build's output)."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("PYTHONPATH", vm_memory.PURE_ENVIRONMENT_VARIABLE)}
    if compiler is not None:
        environment["CC"] = compiler
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--verbose", "--wheel-dir",
         str(tmp_path), str(ROOT)],
        capture_output=True, text=True, env=environment, timeout=900, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = tmp_path.glob("vm_memory-*.whl")
    return wheel, build.stdout + build.stderr


def path_of_installed_wheel(wheel: Path, target: Path) -> dict[str, Any]:
    """Unpack `wheel` as an installer would (a wheel is a zip of the site-packages
    files) and report which path the library takes from there, after a few accesses."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return run_child('''
        results["path"] = access_path().name
        results["reason"] = access_path().reason
        results["file"] = sys.modules["vm_memory"].__file__
        memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE)])
        memory.write_atomic(wide(8), 7)
        results["value"] = [memory.fetch_add(wide(8), 1), memory.read_obj(wide(8))]
    ''', path=target)


@needs_pip
@pytest.mark.slow
def test_an_install_without_a_compiler_works_on_the_pure_path(tmp_path: Path) -> None:
    """With `CC` naming a compiler that always fails, the build succeeds, says why it
    went pure, and makes a pure wheel (no extension, tagged py3-none-any) whose library
    runs the pure path. The control: with the real compiler, the same build makes an
    abi3 wheel carrying the extension, and the library runs compiled from it."""
    wheel, output = build_wheel(tmp_path / "pure", "false")
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    assert "building without the compiled access path" in output, output
    with zipfile.ZipFile(wheel) as archive:
        assert not [name for name in archive.namelist() if name.endswith(".so")]
    results = path_of_installed_wheel(wheel, tmp_path / "pure-site")
    assert results["path"] == "pure", results
    assert "not built here" in results["reason"], results
    assert results["file"].startswith(str(tmp_path / "pure-site")), results
    assert results["value"] == [7, 8]

    if shutil.which(os.environ.get("CC") or "cc") is None:
        assert os.environ.get("CI") != "true", "CI must have a C compiler"
        pytest.skip("no C compiler here for the control")
    wheel, _ = build_wheel(tmp_path / "compiled", None)
    assert "-cp311-abi3-" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as archive:
        assert "vm_memory/_fastpath.abi3.so" in archive.namelist()
    results = path_of_installed_wheel(wheel, tmp_path / "compiled-site")
    assert results["path"] == "compiled", results
    assert results["value"] == [7, 8]


# ---- What the compiled path is made of ---------------------------------------------------


def test_the_hot_methods_are_the_compiled_ones(compiled_path: Any) -> None:
    assert compiled_path.missing_registrations() == []
    for name in COMPILED_METHODS:
        assert name not in vars(GuestMemory), name
        assert getattr(GuestMemory, name) is vars(compiled_path.MemoryCore)[name], name
    for name in ("new", "try_new", "offset", "_make", "__add__", "__sub__"):
        assert name not in vars(AlignedGuestAddress), name
    assert "__init__" not in vars(GuestAddress)


def test_the_extension_makes_no_libatomic_call(compiled_path: Any) -> None:
    """Every atomic is inlined: the extension imports no `__atomic_*` function."""
    nm = shutil.which("nm")
    if nm is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nm (binutils) is needed on CI")
        pytest.skip("nm (binutils) is not installed here")
    undefined = subprocess.run([nm, "-D", "--undefined-only", compiled_path.__file__],
                               capture_output=True, text=True, check=True).stdout
    assert "PyLong_FromUnsignedLongLong" in undefined  # the listing is the real one
    assert [line for line in undefined.splitlines() if "__atomic" in line] == []


def test_lock_free_widths_agree_with_libatomic(compiled_path: Any) -> None:
    """C runs an atomic width only where the compiler does it lock-free, which must be
    exactly where libatomic (the pure path's judge) says lock-free on this host."""
    compiled_widths = compiled_path.lock_free_widths()
    assert compiled_widths == tuple(size for size in (1, 2, 4, 8)
                                    if libatomic_lock_free(size))


def test_half_built_core_objects_cannot_exist(compiled_path: Any) -> None:
    with pytest.raises(TypeError):
        compiled_path.AlignedCore()
    with pytest.raises(TypeError):
        object.__new__(AlignedGuestAddress)  # type: ignore[vm-memory-aligned-construction]
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x1000)])
    with pytest.raises(AttributeError, match="fixed at construction"):
        memory._install(())  # pyright: ignore[reportPrivateUsage]
    fresh = GuestMemory.__new__(GuestMemory)
    with pytest.raises(TypeError):
        fresh._install((compiled_path.RegionCore(),))  # pyright: ignore[reportPrivateUsage]
    with pytest.raises(ValueError, match="does not fit"):  # no region 5 to remove
        fresh._install_changed(memory, 5, None)  # pyright: ignore[reportPrivateUsage]
    same_start = memory.regions()[0]
    with pytest.raises(ValueError, match="does not fit"):  # it would not stay sorted
        fresh._install_changed(memory, 1, same_start)  # pyright: ignore[reportPrivateUsage]
    with pytest.raises(TypeError):
        fresh._install_changed(memory, 0, object())  # type: ignore[arg-type]  # pyright: ignore[reportPrivateUsage, reportArgumentType]
    assert fresh.regions() == ()
    assert fresh.read_bytes(GuestAddress(0), 0) == b""


# ---- The region cache ---------------------------------------------------------------------


def read_through_every_fast_path(memory: GuestMemory, value: int) -> int:
    """The byte at `value` by read_obj, read_atomic, read_obj_unaligned and read_slice,
    which must agree."""
    aligned = AlignedGuestAddress.new(ctypes.c_uint8, GuestAddress(value))
    buffer = bytearray(1)
    memory.read_slice(GuestAddress(value), buffer)
    answers = {memory.read_obj(aligned), memory.read_atomic(aligned),
               memory.read_obj_unaligned(GuestAddress(value), ctypes.c_uint8), buffer[0]}
    assert len(answers) == 1, (hex(value), answers)
    return answers.pop()


def test_the_region_cache_answers_switches_and_checks_each_guess(compiled_path: Any) -> None:
    """Each memory object remembers, per cache slot of a page, the region a lookup found
    there: alternating between regions on different pages is answered from the cache
    (no lookup misses once warm), and a slot's region is used only after checking that
    it holds the address. Two regions sharing a page replace each other in its slot and
    each read still answers its own region. The control: right after a read of one, the
    slot's guess for the other's address is the wrong region — an unchecked guess would
    have answered it. A memory made by insert or remove starts with an empty cache."""
    page = 1 << LOOKUP_SHIFT
    base = 0x40_0000
    memory = GuestMemoryMmap.from_ranges(
        [(GuestAddress(base + 0x100), 0x100), (GuestAddress(base + 0x800), 0x100),
         (GuestAddress(base + 3 * page + 0x100), 0x100)], one_mapping=True)
    first, sharing, elsewhere = memory.regions()
    for mark, region in zip((0xA1, 0xB2, 0xC3), (first, sharing, elsewhere), strict=True):
        view = region.buffer
        assert view is not None
        view[:] = bytes([mark]) * region.length
    a, b, c = base + 0x140, base + 0x840, base + 3 * page + 0x140
    cached = partial(compiled_path.MemoryCore._cached_region, memory)
    misses = partial(compiled_path.MemoryCore._cache_misses, memory)
    assert (cached(a), cached(b), cached(c), misses()) == (None, None, None, 0)

    assert read_through_every_fast_path(memory, a) == 0xA1
    assert (cached(a), misses()) == (first, 1)  # the first read missed and filled
    assert read_through_every_fast_path(memory, c) == 0xC3
    assert (cached(a), cached(c), misses()) == (first, elsewhere, 2)
    for _ in range(10):  # switching regions on different pages: all from the cache
        assert read_through_every_fast_path(memory, a) == 0xA1
        assert read_through_every_fast_path(memory, c) == 0xC3
    assert misses() == 2

    # the control: the slot of b's page names `first`, which does not hold b
    assert cached(b) is first and not first.start_value <= b < first.end_value
    for round_number in range(5):  # sharing a page: each switch is a checked miss
        assert read_through_every_fast_path(memory, b) == 0xB2
        assert cached(a) is sharing
        assert read_through_every_fast_path(memory, a) == 0xA1
        assert cached(b) is first
        assert misses() == 2 + 2 * (round_number + 1)
    assert memory.find_region(GuestAddress(b)) is sharing

    derived, removed = memory.remove_region(first.start, first.length)
    assert removed is first
    derived_cached = partial(compiled_path.MemoryCore._cached_region, derived)
    assert (derived_cached(a), derived_cached(c)) == (None, None)  # a cache of its own
    with pytest.raises(InvalidGuestAddress):
        derived.read_obj(AlignedGuestAddress.new(ctypes.c_uint8, GuestAddress(a)))
    assert read_through_every_fast_path(derived, b) == 0xB2
    assert read_through_every_fast_path(memory, a) == 0xA1  # the old snapshot still holds it
    assert derived_cached(a) is sharing and cached(a) is first


WARM_CLOSE: Final = '''
        closing = GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(0))
        staying = GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(5 * PAGE))

        def reads(memory, value):
            return [outcome(call) for call in (
                lambda: memory.read_atomic(wide(value)), lambda: memory.read_obj(wide(value)),
                lambda: memory.read_obj_unaligned(GuestAddress(value), WIDE_TYPE),
                lambda: memory.read_slice(GuestAddress(value), bytearray(WIDE_BYTES)) or "read",
                lambda: memory.write_obj(wide(value), 2))]

        class Cycle:
            def __del__(self):
                memory = self.memory
                results["warm before"] = WARM(memory)
                results["close"] = outcome(closing.close)
                for round_number in range(3):
                    results[f"closed {round_number}"] = reads(memory, 8)
                    results[f"staying {round_number}"] = reads(memory, 5 * PAGE + 8)

        def make_garbage():
            memory = GuestMemoryMmap.from_regions([closing, staying])
            for _ in range(20):  # both regions in the cache
                memory.write_atomic(wide(8), 1)
                memory.write_atomic(wide(5 * PAGE + 8), 2)
            cycle = Cycle()
            cycle.self, cycle.memory = cycle, memory  # the cycle alone keeps the memory

        make_garbage()
        gc.collect()
'''


@pytest.mark.parametrize("pure", [False, True], ids=["region cache", "pure page hits"])
def test_a_close_is_seen_through_a_warm_region_cache(pure: bool) -> None:
    """Two regions read in turn until both are in the compiled region cache (or the pure
    path's page hits); a finalizer closes one (the memory is garbage, as in the test
    below) and reads both through every fast path: the closed one is a typed refusal
    each time (never a read of unmapped memory), the other still answers warm. The
    warmth is checked: two cache misses only, or both pages remembered."""
    if not pure and access_path().name != "compiled":
        pytest.skip("the compiled path is not active here (the pure run covers the other)")
    warm = ("lambda memory: sorted(memory._page_hits)" if pure
            else "lambda memory: memory._cache_misses()")
    results = run_child(f"        WARM = {warm}\n" + WARM_CLOSE, pure=pure)
    assert results["warm before"] == ([0, 5] if pure else 2)
    assert results["close"] == {"value": None}
    for round_number in range(3):
        closed = [answer.get("raised") for answer in results[f"closed {round_number}"]]
        assert closed == ["AtomicAccessUnsupported", "MappingError", "MappingError",
                          "MappingError", "MappingError"], closed
        assert [answer.get("value") for answer in results[f"staying {round_number}"]] == \
            [2, 2, 2, "read", None]


# ---- Lifetimes under raw pointers (children) ----------------------------------------------


def test_the_compiled_children_can_fail(compiled_path: object) -> None:
    """The control: unmapping a region's memory behind the library's back (no close, so
    nothing tells the C table) and then reading through the compiled path kills the
    child, and `run_child` reports it: the scenarios below would be seen to crash."""
    with pytest.raises(AssertionError, match="status -11"):
        run_child('''
            memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), PAGE)])
            libc = ctypes.CDLL(None)
            libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
            libc.munmap(memory.get_host_address(GuestAddress(0)), PAGE)
            memory.read_atomic(wide(8))
        ''')


def test_a_close_inside_garbage_collection_reaches_the_c_table(compiled_path: object) -> None:
    """A memory in a reference cycle is garbage: the collector clears the weak reference
    that counts it as a user before finalizers run, so a finalizer may close its region
    and another use the memory after. The close tells every C table (its copy of the host
    pointer is refreshed): the use is a typed refusal, not a SIGSEGV."""
    results = run_child('''
        region = GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(0))

        class Cycle:
            def __del__(self):
                memory = self.memory
                results["close"] = outcome(region.close)
                for name, call in (("read_atomic", lambda: memory.read_atomic(wide(8))),
                                   ("write_obj", lambda: memory.write_obj(wide(8), 1)),
                                   ("read_slice", lambda: memory.read_slice(
                                       GuestAddress(0), bytearray(8)))):
                    results[name] = outcome(call)

        def make_garbage():
            memory = GuestMemoryMmap.from_regions([region])
            memory.write_atomic(wide(8), 5)  # the C table is warm on this region
            cycle = Cycle()
            cycle.self, cycle.memory = cycle, memory  # the cycle alone keeps the memory

        make_garbage()
        gc.collect()
        results["closed"] = region.closed
    ''')
    assert results["close"] == {"value": None}
    assert results["closed"] is True
    assert results["read_atomic"]["raised"] == "AtomicAccessUnsupported"
    assert results["write_obj"]["raised"] == "MappingError"
    assert results["read_slice"]["raised"] == "MappingError"


def test_dirty_tracking_switched_while_writes_run(compiled_path: object) -> None:
    """One thread writes through every compiled write path while another starts and
    stops dirty tracking (each stop frees a bitmap the C paths mark): no crash, and
    pages written while tracking is on are marked."""
    results = run_child('''
        memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 16 * PAGE)])
        region = memory.regions()[0]
        stop = threading.Event()
        writes, errors = [0], []

        def writer():
            value = 0
            try:
                while not stop.is_set():
                    value = (value + 1) & 0xFFFF
                    memory.write_obj(wide(8 * (value % 512)), value)
                    memory.write_atomic(wide(PAGE + 8 * (value % 512)), value)
                    memory.fetch_add(wide(2 * PAGE), 1)
                    memory.write_slice(GuestAddress(3 * PAGE), b"x" * 64)
                    memory.write_obj_unaligned(GuestAddress(4 * PAGE + 3), ctypes.c_uint32,
                                               value)
                    writes[0] += 1
            except Exception as error:  # reported; the loops below stop waiting for it
                errors.append(f"{type(error).__name__}: {error}")

        thread = threading.Thread(target=writer)
        thread.start()
        switches = 0
        while (switches < 2000 or writes[0] < 2000) and thread.is_alive():
            region.track_dirty_pages()
            region.stop_tracking_dirty_pages()
            switches += 1
            if switches % 100 == 0:
                gc.collect()
        bitmap = region.track_dirty_pages()
        before = writes[0]
        while writes[0] < before + 10 and thread.is_alive():
            pass
        stop.set()
        thread.join()
        results["switches"] = switches
        results["writer errors"] = errors
        results["dirty"] = bitmap.dirty_pages()
    ''')
    assert results["writer errors"] == []
    assert results["switches"] >= 2000
    assert results["dirty"] == [0, 1, 2, 3, 4]


def test_a_refused_close_leaves_the_c_table_working(compiled_path: object) -> None:
    """A close refused for an exported buffer restores the views (the host memory did not
    move); the compiled paths keep working, and once nothing holds the mapping the close
    succeeds."""
    results = run_child('''
        region = GuestRegionMmap(MmapRegion.anonymous(PAGE), GuestAddress(0))
        memory = GuestMemoryMmap.from_regions([region])
        memory.write_atomic(wide(8), 41)
        exported = memory.get_slice(GuestAddress(0), 16).as_memoryview()
        del memory
        gc.collect()
        results["refused"] = outcome(region.close)
        memory = GuestMemoryMmap.from_regions([region])
        results["after"] = memory.fetch_add(wide(8), 1)
        results["read"] = memory.read_atomic(wide(8))
        exported.release()
        del memory
        gc.collect()
        results["close"] = outcome(region.close)
    ''')
    assert results["refused"]["raised"] == "RegionInUse"
    assert (results["after"], results["read"]) == (41, 42)
    assert results["close"] == {"value": None}


def test_a_removed_region_stays_mapped_for_old_snapshots(compiled_path: object) -> None:
    """Hot-plug derives each new table from the old one; an old snapshot still reads the
    removed region through its own table, and the region cannot be closed under it."""
    results = run_child('''
        holder = GuestMemoryAtomic(GuestMemoryMmap.from_ranges(  # each closable alone
            [(GuestAddress(index * 2 * PAGE), PAGE) for index in range(64)],
            one_mapping=False))
        old = holder.memory()
        old.write_atomic(wide(10 * 2 * PAGE), 77)
        removed = holder.remove_region(GuestAddress(10 * 2 * PAGE), PAGE)
        results["refused"] = outcome(removed.close)
        results["old"] = old.read_atomic(wide(10 * 2 * PAGE))
        results["new"] = outcome(lambda: holder.memory().read_atomic(wide(10 * 2 * PAGE)))
        del old
        gc.collect()
        results["close"] = outcome(removed.close)
    ''')
    assert results["refused"]["raised"] == "RegionInUse"
    assert results["new"]["raised"] == "InvalidGuestAddress"
    assert (results["old"], results["close"]) == (77, {"value": None})


def test_aligned_addresses_in_c_keep_their_type_and_value() -> None:
    """The compiled constructors and arithmetic give what the pure ones give (run on
    whichever path is active; the other path's answers are test_contract's business)."""
    address = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(0x1000))
    assert (address + 8).type is ctypes.c_uint32
    with pytest.raises(MisalignedAddress):
        _ = address + 2  # type: ignore[vm-memory-misaligned]
    assert (address - 4).raw_value() == 0xFFC
    assert address.offset(-1).raw_value() == 0xFFC
    assert address.offset(3).raw_value() == 0x100C
    assert AlignedGuestAddress.try_new(ctypes.c_uint32,
                                       GuestAddress(0x1002)) is None  # type: ignore[vm-memory-misaligned]
    assert GuestAddress(5) + 3 == GuestAddress(8)
    assert GuestAddress(5) - 5 == GuestAddress(0)
