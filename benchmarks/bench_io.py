"""Stream I/O and dirty-page marking against raw baselines on the same memory and file.

Rows:
- `read_from`/`write_to` of 64 MiB spanning four 16 MiB regions, from/to a file in the
  page cache, through a file descriptor (one preadv/pwritev) and through a binary file
  object (readinto/write per region), against a raw `FileIO.readinto`/`write` on one
  64 MiB mmap (target ≥ 80 % of the raw bandwidth);
- `write_slice` of 4 KiB with dirty tracking on against the same call with it off
  (target: at most 1.3 times), and, reported without a target, the same for `write_obj` u64 and
  `fetch_add` u64.

Run alone with `python -m benchmarks.bench_io [--quick]`.
"""

from __future__ import annotations

import ctypes
import io
import mmap
import sys
import tempfile
from typing import Any

from benchmarks.common import (
    FULL,
    Case,
    Comparison,
    Row,
    Settings,
    Skipped,
    measure,
    run_module,
)
from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap

MEMORY_START = 0x1_0000_0000
STREAM_SIZE = 64 << 20
REGION_COUNT = 4
"""The 64 MiB span crosses REGION_COUNT - 1 region boundaries."""
DIRTY_REGION_SIZE = 1 << 20
DIRTY_OFFSET = 0x3000
WRITE_SIZE = 4 << 10


def _touched_memory() -> GuestMemoryMmap:
    """REGION_COUNT adjacent regions covering STREAM_SIZE, every page faulted in."""
    size = STREAM_SIZE // REGION_COUNT
    memory = GuestMemoryMmap.from_ranges(
        [(GuestAddress(MEMORY_START + index * size), size) for index in range(REGION_COUNT)])
    memory.write_slice(GuestAddress(MEMORY_START), bytes(range(256)) * (STREAM_SIZE // 256))
    return memory


def stream_comparisons() -> list[Comparison]:
    """read_from/write_to over several regions vs raw readinto/write on one mmap."""
    memory = _touched_memory()
    raw_map = mmap.mmap(-1, STREAM_SIZE)
    raw_map.write(bytes(range(255, -1, -1)) * (STREAM_SIZE // 256))
    backing = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the namespace)
    backing.write(bytes(STREAM_SIZE))
    backing.flush()
    fd = backing.fileno()
    file_object = io.FileIO(fd, "r+", closefd=False)
    file_object.readall()  # the whole file in the page cache before timing
    names: dict[str, Any] = {
        "memory": memory, "address": GuestAddress(MEMORY_START), "fd": fd,
        "size": STREAM_SIZE, "raw_map": raw_map, "file": file_object, "backing": backing,
    }
    raw_read = Case("FileIO.readinto(one mmap)", "file.seek(0)\nfile.readinto(raw_map)",
                    names)
    raw_write = Case("FileIO.write(one mmap)", "file.seek(0)\nfile.write(raw_map)", names)
    label = f"64 MiB over {REGION_COUNT} regions"
    return [
        Comparison(f"read_from fd (preadv), {label}",
                   Case("ours", "read_from(address, fd, size, file_offset=0)", names,
                        "read_from = memory.read_from"),
                   raw_read, kind="bandwidth", target=0.8, bytes_per_op=STREAM_SIZE),
        Comparison(f"read_from file object (readinto), {label}",
                   Case("ours", "file.seek(0)\nread_from(address, file, size)", names,
                        "read_from = memory.read_from"),
                   raw_read, kind="bandwidth", target=0.8, bytes_per_op=STREAM_SIZE),
        Comparison(f"write_to fd (pwritev), {label}",
                   Case("ours", "write_to(address, fd, size, file_offset=0)", names,
                        "write_to = memory.write_to"),
                   raw_write, kind="bandwidth", target=0.8, bytes_per_op=STREAM_SIZE),
        Comparison(f"write_to file object (write), {label}",
                   Case("ours", "file.seek(0)\nwrite_to(address, file, size)", names,
                        "write_to = memory.write_to"),
                   raw_write, kind="bandwidth", target=0.8, bytes_per_op=STREAM_SIZE),
    ]


def dirty_comparisons() -> list[Comparison]:
    """The same writes on two identical memories, one with dirty tracking on."""
    untracked = GuestMemoryMmap.from_ranges([(GuestAddress(MEMORY_START), DIRTY_REGION_SIZE)])
    tracked = GuestMemoryMmap.from_ranges([(GuestAddress(MEMORY_START), DIRTY_REGION_SIZE)])
    tracked.track_dirty_pages()
    address = GuestAddress(MEMORY_START + DIRTY_OFFSET)
    word = AlignedGuestAddress.new(ctypes.c_uint64, address)
    source = bytes(range(256)) * (WRITE_SIZE // 256)
    for memory in (untracked, tracked):
        memory.write_slice(GuestAddress(MEMORY_START), bytes(DIRTY_REGION_SIZE))

    def names(memory: GuestMemoryMmap) -> dict[str, Any]:
        return {"memory": memory, "address": address, "word": word, "source": source}

    def pair(operation: str, stmt: str, setup: str, target: float | None) -> Comparison:
        return Comparison(operation,
                          Case("dirty tracking on", stmt, names(tracked), setup),
                          Case("dirty tracking off", stmt, names(untracked), setup),
                          target=target)

    return [
        pair("write_slice 4 KiB: dirty tracking overhead", "write_slice(address, source)",
             "write_slice = memory.write_slice", 1.3),
        pair("write_obj u64: dirty tracking overhead", "write_obj(word, 7)",
             "write_obj = memory.write_obj", None),
        pair("fetch_add u64: dirty tracking overhead", "fetch_add(word, 1)",
             "fetch_add = memory.fetch_add", None),
    ]


def io_comparisons() -> tuple[list[Comparison], list[Skipped]]:
    """Every comparison of this module (the memory and file live as long as they do)."""
    return stream_comparisons() + dirty_comparisons(), []


def io_rows(settings: Settings = FULL) -> list[Row]:
    """Measure every comparison of this module and return the rows."""
    comparisons, _ = io_comparisons()
    return measure(comparisons, settings)


if __name__ == "__main__":
    sys.exit(run_module("Stream I/O and dirty tracking (issue 5)", io_comparisons, sys.argv[1:]))
