"""What the mypy plugin costs: mypy's wall time on a generated user module that calls the
API everywhere, cold cache, with and without the plugin, measured in one run.

Run with `python -m benchmarks.bench_plugin [--lines N] [--repeats N]` (target: the plugin
adds at most 20 %). Runs alternate between the two configurations; the best of each is
compared, as the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
TARGET_RATIO: Final = 1.2

HEADER: Final = '''"""Generated: a user module calling the vm_memory API everywhere."""
import ctypes

from vm_memory import (AlignedGuestAddress, GuestAddress, GuestMemoryMmap, Le32,
                       Ordering)


class Descriptor(ctypes.Structure):
    _fields_ = (("address", ctypes.c_uint64), ("length", Le32), ("flags", ctypes.c_uint16))


memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x100000)])
'''

BLOCK: Final = '''

def block_{n}() -> int:
    word = AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress({base:#x}))
    quad = AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress({base8:#x}))
    slot = AlignedGuestAddress.new(Descriptor, GuestAddress({base8:#x} + 0x40))
    memory.write_atomic(word, {n} % 1000, Ordering.RELEASE)
    total = memory.fetch_add(quad, 1) + memory.read_atomic(word, Ordering.ACQUIRE)
    ok, seen = memory.compare_exchange(quad, 1, 2, Ordering.ACQ_REL, Ordering.ACQUIRE)
    memory.write_obj(slot, Descriptor({n}, 64, 1))
    descriptor = memory.read_obj(slot)
    value = memory.read_obj_unaligned(GuestAddress({base:#x} + 3), Le32)
    following = word + 4
    return total + seen + int(ok) + int(descriptor.length) + value + following.raw_value()
'''


def generate(lines: int) -> str:
    """A module of about `lines` lines."""
    parts = [HEADER]
    count = 0
    while sum(part.count("\n") for part in parts) < lines:
        base = 0x1000 + (count % 2000) * 0x80
        parts.append(BLOCK.format(n=count, base=base, base8=base + 8))
        count += 1
    return "".join(parts)


def mypy_seconds(module: Path, config: Path) -> float:
    """One cold-cache mypy run's wall time."""
    cache = module.parent / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "mypy_plugin")])
    began = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir",
         str(cache), str(module)], capture_output=True, text=True, env=environment,
        check=False)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(f"mypy failed on the generated module:\n{result.stdout}")
    return seconds


def measure(lines: int, repeats: int) -> tuple[int, float, float]:
    """(lines, best seconds without the plugin, best seconds with it)."""
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        module = folder / "user_module.py"
        module.write_text(generate(lines))
        plain = folder / "plain.ini"
        plain.write_text("[mypy]\nstrict = True\n")
        plugged = folder / "plugin.ini"
        plugged.write_text("[mypy]\nstrict = True\nplugins = vm_memory_mypy.plugin\n\n"
                           "[vm_memory_mypy]\ntarget = x86_64\n")
        without: list[float] = []
        with_plugin: list[float] = []
        for _ in range(repeats):
            without.append(mypy_seconds(module, plain))
            with_plugin.append(mypy_seconds(module, plugged))
        return module.read_text().count("\n"), min(without), min(with_plugin)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_plugin")
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args(argv)
    lines, without, with_plugin = measure(arguments.lines, arguments.repeats)
    ratio = with_plugin / without
    print("| mypy, cold cache | lines | without plugin (s) | with plugin (s) | ratio | target |")
    print("|---|---:|---:|---:|---:|---|")
    print(f"| generated user module | {lines:,} | {without:.2f} | {with_plugin:.2f} | "
          f"{ratio:.2f} | ≤ {TARGET_RATIO} ({'yes' if ratio <= TARGET_RATIO else 'no'}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
