"""What the mypy plugin costs: mypy's wall time on a generated user module that uses the
API everywhere (atomics, Structures and their fields, constants, generic helpers), with
and without the plugin, measured in one run.

Time is the mypy process's CPU time (user + system), not wall time: on a shared machine
another process's load stretches wall time but not the work mypy does.

Two rows: the module alone, its dependencies (the standard library, vm_memory) already in
mypy's cache — what a user waits for after editing the module, and the figure the target
applies to; and a cold cache, where checking the dependencies dilutes the plugin's share.
Runs alternate between the two configurations and the best of each is kept, as the
machine is shared.

Run with `python -m benchmarks.bench_plugin [--lines N] [--repeats N]` (target: the plugin
adds at most 20 % on a 3,000-line module).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

TARGET_RATIO: Final = 1.2

HEADER: Final = '''"""Generated: a user module calling the vm_memory API everywhere."""
import ctypes
import enum
from typing import Final

from vm_memory import (AlignedGuestAddress, AtomicInteger, GuestAddress, GuestMemory,
                       GuestMemoryMmap, Le16, Le32, Le64, Ordering)

RING_BASE: Final = 0x1000


class Reg(enum.IntEnum):
    STATUS = 0x10
    CONTROL = 0x14


class Descriptor(ctypes.Structure):
    _fields_ = (("address", Le64), ("length", Le32), ("flags", Le16), ("next", Le16))


def bump(memory: GuestMemory, counter: AlignedGuestAddress[AtomicInteger]) -> int:
    return memory.fetch_add(counter, 1, Ordering.RELAXED)


memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x100000)])
'''

BLOCK: Final = '''

def block_{n}() -> int:
    word = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress({base:#x}))
    quad = AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress({base8:#x}))
    slot = AlignedGuestAddress.new(Descriptor, GuestAddress({base8:#x} + 0x40))
    status = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(RING_BASE + Reg.STATUS))
    memory.write_atomic(word, {n} % 1000, Ordering.RELEASE)
    total = memory.fetch_add(quad, 1) + memory.read_atomic(word, Ordering.ACQUIRE)
    ok, seen = memory.compare_exchange(quad, 1, 2, Ordering.ACQ_REL, Ordering.ACQUIRE)
    memory.write_obj(slot, Descriptor({n}, 64, 1, 0))
    descriptor = memory.read_obj(slot)
    payload = memory.read_bytes(GuestAddress(descriptor.address), descriptor.length)
    value = memory.read_obj_unaligned(GuestAddress({base:#x} + 3), Le32)
    following = word + 4
    return (total + seen + int(ok) + value + following.raw_value() + len(payload)
            + bump(memory, word) + memory.read_atomic(status))
'''


def generate(lines: int) -> str:
    """A module of about `lines` lines."""
    parts = [HEADER]
    count = 0
    while sum(part.count("\n") for part in parts) < lines:
        base = 0x2000 + (count % 2000) * 0x80
        parts.append(BLOCK.format(n=count, base=base, base8=base + 8))
        count += 1
    return "".join(parts)


def mypy_seconds(folder: Path, module: str, config: Path, cache: Path | None) -> float:
    """One mypy run's CPU time: from a copy of the warm `cache`, or a cold one."""
    run_cache = folder / "run-cache"
    shutil.rmtree(run_cache, ignore_errors=True)
    if cache is not None:
        shutil.copytree(cache, run_cache)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir",
         str(run_cache), module], cwd=folder, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        raise RuntimeError(f"mypy failed on the generated module:\n{result.stdout}")
    return seconds


def warm_cache(folder: Path, config: Path, name: str) -> Path:
    """A cache holding the dependencies (a module that imports what the user module
    imports), not the user module itself."""
    (folder / "dependencies.py").write_text(HEADER)
    cache = folder / f"cache-{name}"
    subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config),
                    "--cache-dir", str(cache), "dependencies.py"], cwd=folder,
                   capture_output=True, text=True, check=True)
    return cache


def measure(lines: int, repeats: int) -> tuple[int, dict[str, tuple[float, float]]]:
    """(lines, {row: (best seconds without the plugin, best seconds with it)})."""
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        (folder / "user_module.py").write_text(generate(lines))
        plain = folder / "plain.ini"
        plain.write_text("[mypy]\nstrict = True\n")
        plugged = folder / "plugin.ini"
        plugged.write_text("[mypy]\nstrict = True\nplugins = vm_memory_mypy.plugin\n\n"
                           "[vm_memory_mypy]\ntarget = x86_64\n")
        caches = {"plain": warm_cache(folder, plain, "plain"),
                  "plugin": warm_cache(folder, plugged, "plugin")}
        samples: dict[str, tuple[list[float], list[float]]] = {
            "generated user module": ([], []), "same, cold cache": ([], [])}
        for _ in range(repeats):
            for row, warm in (("generated user module", True), ("same, cold cache", False)):
                without, with_plugin = samples[row]
                without.append(mypy_seconds(folder, "user_module.py", plain,
                                            caches["plain"] if warm else None))
                with_plugin.append(mypy_seconds(folder, "user_module.py", plugged,
                                                caches["plugin"] if warm else None))
        count = (folder / "user_module.py").read_text().count("\n")
        return count, {row: (min(without), min(with_plugin))
                       for row, (without, with_plugin) in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_plugin")
    parser.add_argument("--lines", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args(argv)
    lines, rows = measure(arguments.lines, arguments.repeats)
    print("| mypy, CPU time | lines | without plugin (s) | with plugin (s) | ratio | target |")
    print("|---|---:|---:|---:|---:|---|")
    for row, (without, with_plugin) in rows.items():
        ratio = with_plugin / without
        target = (f"≤ {TARGET_RATIO} ({'yes' if ratio <= TARGET_RATIO else 'no'})"
                  if row == "generated user module" else "none (reported)")
        print(f"| {row} | {lines:,} | {without:.2f} | {with_plugin:.2f} | {ratio:.2f} | "
              f"{target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
