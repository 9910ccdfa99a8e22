"""``vm-memory inspect`` against hostile files and limits, run as a user runs it.

Every command here runs in a child interpreter, because what is tested is how the
process ends: with exit status 0, 1 or 2 and a one-line message, never a traceback, a
hang, a `MemoryError` or a signal. The cases: a FIFO, a directory and a character device
instead of a file; lengths up to 2**64 under a small address-space limit; a descriptor
limit lower than the number of regions, and one already exhausted; a live value watched
until SIGINT; and a RAM file that another process truncates in a loop while the
inspector reads, dumps, searches and reads atomically. Each harness also shows that it
bites: a plain allocation fails under the same limit, and a reader that maps the file
itself dies of SIGBUS under the same truncator.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Generator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Final

import pytest
from host_assumptions import WIDE_ATOMIC_BYTES
from support import provoke, python_environment, run_python, run_python_code

from vm_memory import GuestAddress
from vm_memory_tools.inspector import InspectError, open_ram_file

FILE_SIZE: Final = 3 * 0x1000
VALUE_ADDRESS: Final = 0x100
VALUE: Final = 0x1122_3344_5566_7788
WIDE: Final = f"u{8 * WIDE_ATOMIC_BYTES}"
"""The widest atomic this host does (u64, or u32 where 8 bytes are refused): the atomic
reads here are about descriptors, signals and shrinking files, not about the width."""
WIDE_VALUE: Final = int.from_bytes(VALUE.to_bytes(8, sys.byteorder)[:WIDE_ATOMIC_BYTES],
                                   sys.byteorder)
"""What a `WIDE` read at VALUE_ADDRESS shows."""
ADDRESS_SPACE_LIMIT: Final = 1 << 30
"""RLIMIT_AS for the child: far below any 2**32-byte allocation, far above its needs."""

DRIVER: Final = """
import resource, sys
limit_name, limit, *arguments = sys.argv[1:]
import shutil  # argparse imports it on first use: not once the descriptors are gone
from vm_memory_tools.cli import main
if limit_name == "RLIMIT_NOFILE_EXHAUSTED":  # every descriptor taken but `limit` of them
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    import os
    held = []
    try:
        while True:
            held.append(os.dup(0))
    except OSError:
        pass
    for _ in range(int(limit)):
        os.close(held.pop())
elif limit_name != "none":
    number = getattr(resource, limit_name)
    resource.setrlimit(number, (int(limit), int(limit)))
sys.exit(main(arguments))
"""
"""Runs ``vm-memory ARGUMENTS`` in this interpreter after setting a resource limit."""


@pytest.fixture
def ram_file(tmp_path: Path) -> Path:
    data = bytearray(FILE_SIZE)
    struct.pack_into("=Q", data, VALUE_ADDRESS, VALUE)  # u64 reads the host's order
    path = tmp_path / "ram.img"
    path.write_bytes(bytes(data))
    return path


def inspect(*arguments: str, limit: tuple[str, int] = ("none", 0),
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``vm-memory inspect ARGUMENTS`` in a child interpreter, under ``limit``."""
    return run_python("-c", DRIVER, limit[0], str(limit[1]), "inspect", *arguments,
                      timeout=timeout)


def assert_clean_refusal(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit status 2, one ``error:`` line on stderr holding ``expected``, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vm-memory inspect: error: "), lines
    for text in expected:
        assert text in lines[0], lines[0]


# ---- Not a file ---------------------------------------------------------------------------


def test_a_fifo_a_directory_and_a_character_device_are_refused_up_front(
        tmp_path: Path) -> None:
    """Refused before anything is read: a FIFO with no writer used to hang the inspector."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (tmp_path, "a directory"),
                       (Path("/dev/null"), "a character device")):
        for command in (["map"], ["read", "u8", "0"], ["--writable", "write", "0", "00"]):
            result = inspect(str(path), *command, timeout=60)
            assert_clean_refusal(result, f"{path} is {kind}: the inspector reads regular "
                                         "files and block devices")


# ---- Sizes: checked before anything is allocated -----------------------------------------


def test_the_address_space_limit_bites() -> None:
    """The control: under the children's RLIMIT_AS, a 4 GiB buffer is a MemoryError (on
    a 32-bit host, the largest a buffer can be: 2 GiB less a byte)."""
    result = run_python_code(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE_LIMIT}, {ADDRESS_SPACE_LIMIT}))
        bytearray(min(1 << 32, sys.maxsize))
    """)
    assert result.returncode == 1 and "MemoryError" in result.stderr


HUGE_REQUESTS: Final = {
    # id: (command, what the message says)
    "hexdump 1 TiB": (["hexdump", "0", "1T"], "hexdump stops at 0x3000, the end of the layout"),
    "hexdump to 2**64": (["hexdump", "0x10", "0xffffffffffffffef"],
                         "hexdump stops at 0x3000, the end of the layout"),
    "read 1 Ti values": (["read", "u8", "0", "--count", "1T"],
                         "runs past the regions of the layout"),
    "atomic read 2**62 values": (["read", "--atomic", "u64", "0", "--count", str(1 << 62)],
                                 "passes 2**64"),
    "read up to 2**64": (["read", "u64", "0", "--count", str(1 << 61)],
                         "0x0-0xffffffffffffffff runs past the regions of the layout"),
    "write past the file": (["--writable", "write", "0x2000", "00" * 0x2000],
                            "runs past the regions of the layout"),
}


@pytest.mark.parametrize("name", list(HUGE_REQUESTS))
def test_huge_lengths_cost_nothing_before_the_refusal(ram_file: Path, name: str) -> None:
    """A guest length of 2**40 or more: an immediate exit 2 naming the range (hexdump
    first shows what the layout holds), under a 1 GiB address-space limit."""
    command, message = HUGE_REQUESTS[name]
    result = inspect(str(ram_file), *command, limit=("RLIMIT_AS", ADDRESS_SPACE_LIMIT))
    assert_clean_refusal(result, message)
    if command[0] == "hexdump":
        assert re.match(r"0+2ff0  00 00", result.stdout.splitlines()[-1]), result.stdout[-500:]
    else:
        assert result.stdout == ""


# ---- Descriptors ---------------------------------------------------------------------------


def test_regions_cost_no_descriptor(ram_file: Path) -> None:
    """700 regions under a limit of 64 descriptors: every command works (each region used
    to hold two descriptors of its own, and 32 regions were an EMFILE traceback)."""
    layout = ",".join(f"{16 * index:#x}:16@{16 * index:#x}" for index in range(700))
    for command, expected in (
        (["map"], "700 region(s), 0x2bc0 B of guest memory"),
        (["read", "--atomic", WIDE, hex(VALUE_ADDRESS)], f"{WIDE_VALUE:#x}"),
        (["search", (VALUE).to_bytes(8, sys.byteorder).hex()], "1 match(es)"),
        (["hexdump", "0", "0x2bc0"], "00002bb0  00 00"),
    ):
        result = inspect(str(ram_file), "--layout", layout, *command,
                         limit=("RLIMIT_NOFILE", 64))
        assert result.returncode == 0, result.stderr[-2000:]
        assert expected in result.stdout, result.stdout[-500:]


def test_running_out_of_descriptors_is_a_clean_exit_2(ram_file: Path) -> None:
    """With no descriptor left the file cannot be opened; with one left it can, but the
    atomic-read helper's pipes cannot be made: both say so, with exit status 2."""
    result = inspect(str(ram_file), "read", "u64", "0", limit=("RLIMIT_NOFILE_EXHAUSTED", 0))
    assert_clean_refusal(result, f"cannot open {ram_file}: Too many open files")
    result = inspect(str(ram_file), "read", "--atomic", "u64", "0",
                     limit=("RLIMIT_NOFILE_EXHAUSTED", 1))
    assert_clean_refusal(result, "too many open files", "ulimit -n")
    result = inspect(str(ram_file), "read", "u64", hex(VALUE_ADDRESS),
                     limit=("RLIMIT_NOFILE_EXHAUSTED", 1))
    assert result.returncode == 0 and f"{VALUE:#x}" in result.stdout, result.stderr


# ---- Watching a live value -------------------------------------------------------------------


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_watch_follows_a_live_value_until_interrupted(ram_file: Path, atomic: bool) -> None:
    """Another process changes the value; the watch shows the change at its next
    reading, and SIGINT ends it with status 0 (the helper process goes with it)."""
    digits = 2 * WIDE_ATOMIC_BYTES
    process = subprocess.Popen(
        [sys.executable, "-m", "vm_memory_tools", "inspect", str(ram_file), "read",
         *["--atomic"] * atomic, WIDE, hex(VALUE_ADDRESS), "--watch", "0.02"],
        env=python_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killer = threading.Timer(120, process.kill)  # a hang is a failure, not a stuck suite
    killer.start()
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.endswith(
            f"{VALUE_ADDRESS:#x}  {WIDE}  {WIDE_VALUE}  {WIDE_VALUE:#0{digits + 2}x}\n"), first
        with ram_file.open("r+b") as file:
            file.seek(VALUE_ADDRESS)
            file.write((42).to_bytes(WIDE_ATOMIC_BYTES, sys.byteorder))
        readings, changed = 1, f"  {WIDE}  42  {42:#0{digits + 2}x}\n"
        while not (line := process.stdout.readline()).endswith(changed):
            assert line, "the watch ended before it showed the new value"
            readings += 1
        os.kill(process.pid, signal.SIGINT)
        _, stderr = process.communicate()
    finally:
        killer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stderr.startswith("stopped after "), stderr


# ---- A RAM file that shrinks under the inspector ---------------------------------------------

SHRINKING_SIZE: Final = 1 << 20
TRUNCATOR: Final = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
size = int(sys.argv[2])
print("truncating", flush=True)
while True:
    os.ftruncate(fd, 0)
    time.sleep(0.0005)
    os.ftruncate(fd, size)
    time.sleep(0.0005)
"""
"""Shrinks the file to nothing and grows it back (as zeros), every millisecond."""


@contextmanager
def truncated_in_a_loop(path: Path) -> Generator[None]:
    """Another process truncates ``path`` in a loop while the block runs."""
    path.write_bytes(bytes(SHRINKING_SIZE))
    truncator = subprocess.Popen([sys.executable, "-c", TRUNCATOR, str(path),
                                  str(SHRINKING_SIZE)], stdout=subprocess.PIPE, text=True)
    try:
        assert truncator.stdout is not None and truncator.stdout.readline() == "truncating\n"
        yield
    finally:
        truncator.kill()
        truncator.wait()
        assert truncator.stdout is not None
        truncator.stdout.close()


SHRINK_COMMANDS: Final = {
    "read": ["read", "u64", "0x100", "--count", "20000"],
    "hexdump": ["hexdump", "0", "1M"],
    "search": ["search", "deadbeef"],
    "read --atomic": ["read", "--atomic", WIDE, "0", "--count", "0x10000"],
    "watch --atomic": ["read", "--atomic", WIDE, "0x100", "--watch", "0.001", "--samples",
                       "200"],
}
SHRINK_ROUNDS: Final = 2
SHRINK_ATTEMPTS: Final = 10


def run_on_shrinking_file(path: Path, command: list[str]) -> subprocess.CompletedProcess[str]:
    """One inspector run against the shrinking file; it must end by itself, 0, 1 or 2,
    with at most a one-line message."""
    result = inspect(str(path), "--layout", f"0:{SHRINKING_SIZE:#x}", *command)
    assert result.returncode in (0, 1, 2), (
        f"{command}: ended with {result.returncode} (a negative status is a signal)\n"
        f"{result.stderr[-2000:]}")
    if result.returncode == 2:
        assert_clean_refusal(result)
    else:
        assert result.stderr == ""
    return result


def test_a_file_shrinking_under_every_command_never_kills_the_inspector(
        tmp_path: Path) -> None:
    """Each command, several times, while another process truncates the file in a loop:
    every run ends with status 0, 1 or 2 and a message, never a signal. A plain read and
    an atomic read must each also be seen to meet the shrink (exit 2 saying so), or the
    runs would prove nothing. (The helper's death by SIGBUS, one way an atomic read meets
    it, is provoked for certain by the next test.)"""
    path = tmp_path / "shrinking.img"
    with truncated_in_a_loop(path):
        for command in SHRINK_COMMANDS.values():
            for _ in range(SHRINK_ROUNDS):
                run_on_shrinking_file(path, command)
        for name, sign in (("read", "shrank to"), ("read --atomic", "read --atomic at")):
            met = provoke(partial(run_on_shrinking_file, path, SHRINK_COMMANDS[name]),
                          partial(_exited_saying, sign), attempts=SHRINK_ATTEMPTS,
                          what=f"'{name}' meeting the shrink")
            print(f"{name}: {met.stderr.strip()}")


def _exited_saying(sign: str, result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 2 and sign in result.stderr


def test_a_shrink_under_the_helpers_mapping_kills_only_the_helper(ram_file: Path) -> None:
    """Deterministic: the watch's helper maps the file for its first reading; the file is
    then cut to nothing, so its next load touches a page past the end: SIGBUS ends the
    helper, and the inspector says so and exits 2."""
    process = subprocess.Popen(
        [sys.executable, "-m", "vm_memory_tools", "inspect", str(ram_file), "read", "--atomic",
         WIDE, hex(VALUE_ADDRESS), "--watch", "0.2"],
        env=python_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.endswith(f"{WIDE_VALUE:#0{2 * WIDE_ATOMIC_BYTES + 2}x}\n"), first
        os.truncate(ram_file, 0)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 2, err
    assert all(line.endswith(f"{WIDE_VALUE:#0{2 * WIDE_ATOMIC_BYTES + 2}x}")
               for line in out.splitlines())  # read before
    assert err == (f"vm-memory inspect: error: read --atomic at {VALUE_ADDRESS:#x}: {ram_file} "
                   "shrank under the mapping of the atomic-read helper process, which died of "
                   "SIGBUS; no value was read\n")


NAIVE_READER: Final = """
import sys, time
from vm_memory import GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion
from vm_memory.errors import MappingPastEof
import os
fd = os.open(sys.argv[1], os.O_RDONLY)
size = int(sys.argv[2])
while True:  # map it while it is whole
    try:
        region = MmapRegion.from_file(fd, size, read_only=True)
        break
    except MappingPastEof:
        pass
memory = GuestMemoryMmap.from_regions([GuestRegionMmap(region, GuestAddress(0))])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    memory.read_bytes(GuestAddress(0), size)
print("never faulted")
"""


def test_a_reader_mapping_the_shrinking_file_itself_dies_of_sigbus(tmp_path: Path) -> None:
    """The control: the same truncator kills a process that reads the file through its
    own mapping, so the test above would see it if the inspector did that."""
    path = tmp_path / "shrinking.img"
    with truncated_in_a_loop(path):
        result = provoke(lambda: run_python("-c", NAIVE_READER, str(path), str(SHRINKING_SIZE)),
                         lambda result: result.returncode == -signal.SIGBUS,
                         attempts=3, what="a SIGBUS")
    assert result.stdout == ""


def test_the_shrink_check_sees_a_shrink_that_already_happened(ram_file: Path) -> None:
    """Deterministic: a file cut short after it was opened is reported, not read as zeros
    silently (the in-process API, between opening and reading)."""
    with open_ram_file(str(ram_file)) as ram:
        value = GuestAddress(VALUE_ADDRESS)
        assert ram.memory.read_bytes(value, 8) == VALUE.to_bytes(8, sys.byteorder)
        ram.check_size("read")  # whole: no complaint
        os.truncate(ram_file, VALUE_ADDRESS)
        assert ram.memory.read_bytes(value, 8) == bytes(8)  # past the end: zeros, silently
        with pytest.raises(InspectError, match="shrank to 0x100 bytes while it was read"):
            ram.check_size("read")
