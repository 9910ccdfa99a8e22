"""What the mypy plugin costs: mypy's CPU time on a generated device module that uses the
API the way device code does, with and without the plugin, measured in one run.

The module (`generate`) is realistic device code repeated with varied constants: a
virtio ring's descriptors read and written through typed Structures and their fields,
register blocks at constants imported from another module and IntEnum offsets, atomics
of every width with orderings, a dataclass of addresses, helpers generic over
GuestMemory (a TypeVar receiver) and over AtomicInteger (the call-site check), volatile
references, and the plain Python around them (loops, branches, arithmetic). Every block
reaches each of the plugin's hooks.

Time is the mypy process's CPU time (user + system), not wall time: on a shared machine
another process's load stretches wall time more than the work mypy does. Two rows: the
module alone, its dependencies (the standard library, vm_memory, the constants module)
already in mypy's cache — what a user waits for after editing the module, and the figure
the target applies to; and a cold cache, where checking the dependencies dilutes the
plugin's share. Each configuration has its own warm cache, built the same way, and each
run starts from a fresh copy of it.

Both configurations run in the same rounds, their order alternating from round to round
so that drift hits both alike; the table gives the median of each and the spread (lowest
to highest) of the per-round ratios. Both run with Python's bytecode cache in a temporary
directory, as an installed package has it (pip compiles it at install time; an
environment with PYTHONDONTWRITEBYTECODE would otherwise recompile the plugin on every
run, which is not the plugin's cost).

Run with `python -m benchmarks.bench_plugin [--lines N] [--rounds N]` (target: the plugin
adds at most 20 % on a 3,000-line module).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

TARGET_RATIO: Final = 1.2
WARM_ROW: Final = "generated user module"
COLD_ROW: Final = "same, cold cache"

CONSTANTS: Final = '''"""Generated: the device's register map, in a module of its own."""
import enum
from typing import Final

MMIO_BASE: Final = 0x10000
RING_BASE: Final = 0x1000
QUEUE_SIZE: Final = 256


class Reg(enum.IntEnum):
    STATUS = 0x10
    CONTROL = 0x14
    INTERRUPT = 0x18
'''

HEADER: Final = '''"""Generated: device code calling the vm_memory API everywhere."""
import ctypes
import dataclasses
from typing import TypeVar

from device_constants import MMIO_BASE, QUEUE_SIZE, RING_BASE, Reg
from vm_memory import (AlignedGuestAddress, AtomicInteger, GuestAddress, GuestMemory,
                       GuestMemoryMmap, Le16, Le32, Le64, Ordering, VolatileRef)

M = TypeVar("M", bound=GuestMemory)


class Descriptor(ctypes.Structure):
    _fields_ = (("address", Le64), ("length", Le32), ("flags", Le16), ("next", Le16))


class UsedElement(ctypes.Structure):
    _fields_ = (("id", Le32), ("length", Le32))


class Registers(ctypes.Structure):
    _fields_ = (("status", ctypes.c_uint32), ("control", ctypes.c_uint32),
                ("features", ctypes.c_uint64), ("name", ctypes.c_char * 8))


@dataclasses.dataclass(frozen=True)
class Queue:
    descriptors: GuestAddress
    used_index: AlignedGuestAddress[ctypes.c_uint16]
    notify: AlignedGuestAddress[ctypes.c_uint32]


def bump(memory: GuestMemory, counter: AlignedGuestAddress[AtomicInteger]) -> int:
    return memory.fetch_add(counter, 1, Ordering.RELAXED)


def wait_ready(memory: M, status: AlignedGuestAddress[ctypes.c_uint32]) -> M:
    while not memory.read_atomic(status, Ordering.ACQUIRE) & 1:
        pass
    return memory


memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x100000)])
'''

RING_BLOCK: Final = '''

def ring_{n}(queue: Queue) -> int:
    word = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress({base:#x}))
    quad = AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress({base:#x} + 8))
    slot = AlignedGuestAddress.new(Descriptor, GuestAddress({base:#x} + 0x48))
    status = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(MMIO_BASE + Reg.STATUS))
    memory.write_atomic(word, {n} % 1000, Ordering.RELEASE)
    total = memory.fetch_add(quad, 1) + memory.read_atomic(word, Ordering.ACQUIRE)
    ok, seen = memory.compare_exchange(quad, 1, 2, Ordering.ACQ_REL, Ordering.ACQUIRE)
    memory.write_obj(slot, Descriptor({n}, 64, 1, 0))
    descriptor = memory.read_obj(slot)
    payload = b""
    if descriptor.flags & 1 and descriptor.length <= 0x1000:
        payload = memory.read_bytes(GuestAddress(descriptor.address), descriptor.length)
    value = memory.read_obj_unaligned(GuestAddress({base:#x} + 3), Le32)
    following = word + 4
    index = memory.read_atomic(queue.used_index, Ordering.ACQUIRE) % QUEUE_SIZE
    used = AlignedGuestAddress.new(UsedElement, GuestAddress(RING_BASE + 0x800 + index * 8))
    memory.write_obj(used, UsedElement(descriptor.next, len(payload)))
    memory.write_atomic(queue.used_index, (index + 1) & 0xFFFF, Ordering.RELEASE)
    return (total + seen + int(ok) + value + following.raw_value() + len(payload)
            + bump(memory, word) + memory.read_atomic(status))
'''

DEVICE_BLOCK: Final = '''

def device_{n}(target: M, queue: Queue) -> int:
    registers = AlignedGuestAddress.new(Registers, GuestAddress(MMIO_BASE + {reg:#x}))
    control = AlignedGuestAddress.new(ctypes.c_uint32,
                                      GuestAddress(MMIO_BASE + {reg:#x} + Reg.CONTROL))
    counter = AlignedGuestAddress.new(ctypes.c_uint16, GuestAddress({base:#x} + 2))
    ready = wait_ready(target, AlignedGuestAddress.new(ctypes.c_uint32,
                                                       GuestAddress(MMIO_BASE + {reg:#x})))
    block = ready.read_obj(registers)
    features = block.features
    if block.name.startswith(b"virtio"):
        features |= 1 << 32
    ready.write_atomic(control, block.control | 4, Ordering.SEQ_CST)
    reference: VolatileRef[ctypes.c_uint32] = ready.get_slice(
        GuestAddress({base:#x}), 8).get_ref(ctypes.c_uint32, 4)
    seen = reference.load() + reference.fetch_add(1, Ordering.ACQ_REL)
    ticks = 0
    for step in range(4):
        ticks += bump(ready, counter) + step
        if ticks > features:
            break
    previous = ready.swap(counter, 0, Ordering.ACQ_REL)
    ready.write_atomic(queue.notify, {n}, Ordering.RELEASE)
    return ticks + seen + previous + ready.read_obj_unaligned(
        GuestAddress(MMIO_BASE + {reg:#x} + 1), ctypes.c_uint8)
'''


def generate(lines: int) -> str:
    """A module of about `lines` lines: the two kinds of block in turn."""
    parts = [HEADER]
    count = 0
    while sum(part.count("\n") for part in parts) < lines:
        block = RING_BLOCK if count % 2 == 0 else DEVICE_BLOCK
        parts.append(block.format(n=count, base=0x2000 + (count % 2000) * 0x80,
                                  reg=0x1000 + (count % 64) * 0x40))
        count += 1
    return "".join(parts)


def environment(folder: Path) -> dict[str, str]:
    """The child's environment: bytecode cached (in `folder`), as after an install."""
    env = {key: value for key, value in os.environ.items()
           if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(folder / "bytecode")
    return env


def mypy_seconds(folder: Path, config: Path, cache: Path | None) -> float:
    """One mypy run's CPU time on the user module: from a copy of the warm `cache`, or
    from a cold one."""
    run_cache = folder / "run-cache"
    shutil.rmtree(run_cache, ignore_errors=True)
    if cache is not None:
        shutil.copytree(cache, run_cache)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir",
         str(run_cache), "user_module.py"], cwd=folder, env=environment(folder),
        capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"mypy failed on the generated module:\n{result.stdout}"
                           f"{result.stderr}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def warm_cache(folder: Path, config: Path, name: str) -> Path:
    """A cache holding the dependencies (a module that imports what the user module
    imports), not the user module itself. Also compiles the bytecode both sides use."""
    (folder / "dependencies.py").write_text(HEADER)
    cache = folder / f"cache-{name}"
    subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config),
                    "--cache-dir", str(cache), "dependencies.py"], cwd=folder,
                   env=environment(folder), capture_output=True, text=True, check=True)
    return cache


Samples = dict[str, tuple[list[float], list[float]]]
"""Row -> (seconds without the plugin, seconds with it), one pair per round."""


def measure(lines: int, rounds: int) -> tuple[int, Samples]:
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        (folder / "device_constants.py").write_text(CONSTANTS)
        (folder / "user_module.py").write_text(generate(lines))
        plain = folder / "plain.ini"
        plain.write_text("[mypy]\nstrict = True\n")
        plugged = folder / "plugin.ini"
        plugged.write_text("[mypy]\nstrict = True\nplugins = vm_memory_mypy.plugin\n\n"
                           "[vm_memory_mypy]\ntarget = x86_64\n")
        caches = {plain: warm_cache(folder, plain, "plain"),
                  plugged: warm_cache(folder, plugged, "plugin")}
        samples: Samples = {WARM_ROW: ([], []), COLD_ROW: ([], [])}
        for number in range(rounds):
            for row, warm in ((WARM_ROW, True), (COLD_ROW, False)):
                order = (plain, plugged) if number % 2 == 0 else (plugged, plain)
                seconds = {config: mypy_seconds(folder, config, caches[config] if warm
                                                else None) for config in order}
                samples[row][0].append(seconds[plain])
                samples[row][1].append(seconds[plugged])
        count = (folder / "user_module.py").read_text().count("\n")
        return count, samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_plugin")
    parser.add_argument("--lines", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=9)
    arguments = parser.parse_args(argv)
    lines, samples = measure(arguments.lines, arguments.rounds)
    print(f"{arguments.rounds} rounds; medians, and the spread of the per-round ratios")
    print("| mypy, CPU time | lines | without plugin (s) | with plugin (s) | ratio "
          "| ratio per round | target |")
    print("|---|---:|---:|---:|---:|---|---|")
    for row, (without, with_plugin) in samples.items():
        ratios = [plugged / plain for plain, plugged in zip(without, with_plugin,
                                                              strict=True)]
        ratio = statistics.median(ratios)
        target = (f"≤ {TARGET_RATIO} ({'yes' if ratio <= TARGET_RATIO else 'no'})"
                  if row == WARM_ROW else "none (reported)")
        print(f"| {row} | {lines:,} | {statistics.median(without):.2f} | "
              f"{statistics.median(with_plugin):.2f} | {ratio:.2f} | "
              f"{min(ratios):.2f} to {max(ratios):.2f} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
