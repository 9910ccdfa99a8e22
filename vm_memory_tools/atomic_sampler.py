"""The inspector's atomic reads, made by a helper process on a mapping of the RAM file.

An atomic load needs the file mapped, and a mapped file that another process truncates
kills whoever then touches a page past its new end with SIGBUS: no Python code can catch
that. So the inspector never maps the file (its plain reads are ``pread``, which cannot
fault) and hands every atomic read to a helper process, `AtomicSampler`. When the file
shrinks under the helper's mapping the helper dies and the inspector reports it; the
inspector itself never sees the signal.

The helper maps a window of the file at a time, read-only (`MmapRegion.from_file`), and
reads each value with `GuestMemory.read_atomic` (one hardware atomic load). Before it
maps a window it checks the file still reaches that far, so a file that has already
shrunk is a plain error reply; only a shrink racing the load itself costs the helper.

Protocol, one text line each way: ``TYPE OFFSET...`` (a native integer type of
`ATOMIC_TYPES` and file offsets, each naturally aligned) is answered ``ok VALUE...`` or
``error MESSAGE``. The helper exits at end of input and ignores SIGINT (the inspector
decides what an interrupt means).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Final

from vm_memory.address import GuestAddress
from vm_memory.aligned_address import AlignedGuestAddress
from vm_memory.atomic_access import AtomicInteger
from vm_memory.byte_valued import ScalarValue
from vm_memory.errors import GuestMemoryError
from vm_memory.guest_memory import GuestMemory
from vm_memory.mmap_memory import GuestMemoryMmap
from vm_memory.mmap_region import GuestRegionMmap, MmapRegion

__all__ = ["ATOMIC_TYPES", "AtomicSampler", "SamplerDied", "file_size", "type_size"]

ATOMIC_TYPES: Final[dict[str, type[ScalarValue[int]]]] = {
    "u8": ctypes.c_uint8, "u16": ctypes.c_uint16, "u32": ctypes.c_uint32,
    "u64": ctypes.c_uint64,
    "i8": ctypes.c_int8, "i16": ctypes.c_int16, "i32": ctypes.c_int32, "i64": ctypes.c_int64,
}
"""The types an atomic read takes (native byte order, as the hardware loads them)."""


def _atomic_load(ctype: type[AtomicInteger]) -> Callable[[GuestMemory, int], int]:
    def load(memory: GuestMemory, address: int) -> int:
        return memory.read_atomic(AlignedGuestAddress.new(ctype, GuestAddress(address)))
    return load


_LOADS: Final[dict[str, Callable[[GuestMemory, int], int]]] = {
    "u8": _atomic_load(ctypes.c_uint8), "u16": _atomic_load(ctypes.c_uint16),
    "u32": _atomic_load(ctypes.c_uint32), "u64": _atomic_load(ctypes.c_uint64),
    "i8": _atomic_load(ctypes.c_int8), "i16": _atomic_load(ctypes.c_int16),
    "i32": _atomic_load(ctypes.c_int32), "i64": _atomic_load(ctypes.c_int64),
}


def type_size(type_name: str) -> int:
    """The size in bytes of a value type named like ``u32``, ``i8``, ``le64``, ``be16``."""
    return int(type_name.lstrip("uilbe")) // 8

WINDOW_SIZE: Final = 1 << 20
"""Bytes of the file the helper maps at a time (one mapping, two descriptors)."""


def file_size(fd: int) -> int:
    """The size of a regular file or a block device (whose ``st_size`` is 0)."""
    if stat.S_ISBLK(os.fstat(fd).st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    return os.fstat(fd).st_size


class SamplerDied(Exception):
    """The helper process ended while a read was outstanding."""

    def __init__(self, returncode: int, stderr: str) -> None:
        self.returncode = returncode
        self.stderr = stderr
        if returncode < 0:
            how = f"was killed by {signal.Signals(-returncode).name}"
        else:
            how = f"exited with status {returncode}"
        super().__init__(f"the atomic-read helper process {how}" +
                         (f": {stderr.strip().splitlines()[-1]}" if stderr.strip() else ""))

    @property
    def bus_error(self) -> bool:
        """It died of SIGBUS: it touched a page of its mapping past the file's end."""
        return self.returncode == -signal.SIGBUS


class AtomicSampler:
    """The inspector's side: a running helper process reading atomically from ``fd``."""

    def __init__(self, fd: int) -> None:
        tools_root = str(Path(__file__).resolve().parent.parent)
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [tools_root, *filter(None, [environment.get("PYTHONPATH")])])
        self._process = subprocess.Popen(
            [sys.executable, "-m", "vm_memory_tools.atomic_sampler", str(fd)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(fd,), env=environment, text=True, start_new_session=True)

    def read(self, type_name: str, offsets: list[int]) -> list[int]:
        """One atomic load of ``type_name`` at each file offset. `SamplerDied` if the
        helper died (a shrinking file: `SamplerDied.bus_error`); `ValueError` with the
        helper's message for a read it refused."""
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(" ".join([type_name, *map(str, offsets)]) + "\n")
            process.stdin.flush()
            reply = process.stdout.readline()
        except BrokenPipeError:
            reply = ""
        if not reply:
            raise self._died()
        status, _, rest = reply.rstrip("\n").partition(" ")
        if status != "ok":
            raise ValueError(rest)
        return [int(value) for value in rest.split()]

    def _died(self) -> SamplerDied:
        process = self._process
        process.kill()
        _, stderr = process.communicate()
        return SamplerDied(process.returncode, stderr)

    def close(self) -> None:
        """End the helper (it exits at the end of its input) and wait for it."""
        process = self._process
        if process.stdin is not None and not process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


class _Window:
    """The part of the file the helper has mapped, as guest memory at its file offsets."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        start = offset - offset % WINDOW_SIZE
        available = file_size(fd)
        if offset + size > available:
            raise ValueError(f"the file is now {available:#x} bytes: file offset {offset:#x} "
                             f"(+{size}) is past its end")
        length = min(WINDOW_SIZE, available - start)
        self.start, self.end = start, start + length
        self.memory = GuestMemoryMmap.from_regions([GuestRegionMmap(
            MmapRegion.from_file(fd, length, offset=start, read_only=True),
            GuestAddress(start))])

    def covers(self, offset: int, size: int) -> bool:
        return self.start <= offset and offset + size <= self.end


def serve(fd: int, requests: IO[str], replies: IO[str]) -> None:
    """The helper's loop: answer each request line until the input ends."""
    window: _Window | None = None
    for line in requests:
        type_name, *offsets = line.split()
        try:
            load, size = _LOADS[type_name], type_size(type_name)
            values: list[int] = []
            for offset in map(int, offsets):
                if window is None or not window.covers(offset, size):
                    window = None  # unmapped once unused: one window at a time
                    window = _Window(fd, offset, size)
                values.append(load(window.memory, offset))
        except (GuestMemoryError, KeyError, OSError, ValueError) as error:
            replies.write(f"error {error}\n")
        else:
            replies.write(" ".join(["ok", *map(str, values)]) + "\n")
        replies.flush()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(int(sys.argv[1]), sys.stdin, sys.stdout)
