"""``vm-memory inspect``: look inside a VM's RAM file as guest physical memory.

A RAM file (a QEMU ``memory-backend-file`` under /dev/shm, a memory dump, a snapshot, a
block device) is opened read-only by default and placed in guest physical memory by
``--layout START:SIZE[@OFFSET],...`` (default: one region at guest 0 covering the whole
file). Subcommands:

- ``map``: the regions, the holes between them and the file offsets behind them;
- ``hexdump ADDR LEN [-v]``: a guest-physical range, across adjacent regions; a line
  equal to the one before is shown once, then ``*`` (as ``hexdump -C`` and ``xxd -a``
  do; ``-v`` shows every line); a range that meets a hole is dumped up to the hole, and
  the command says where it stopped and why (exit status 2);
- ``read TYPE ADDR [--count N] [--atomic] [--watch SECONDS [--samples N]]``: typed values
  (``u8..u64``, ``i8..i64``, ``le16..le64``, ``be16..be64``); ``--atomic`` reads each
  native value with one atomic load, the way to sample a live guest's counters and flags
  without a torn value; ``--watch`` reads them again every SECONDS until interrupted
  (Ctrl-C ends it with status 0) or ``--samples`` readings were shown;
- ``search PATTERN [--text] [--max N]``: every guest address where a byte pattern starts,
  also across adjacent regions (exit 1 when there is none, like grep);
- ``write ADDR BYTES``: only with ``--writable`` (changes the file).

What is guaranteed, also against a live VM or another process changing the file:

- Bad input (an address outside the layout, a layout past the end of the file,
  overlapping regions, a FIFO, a directory or a character device instead of a file,
  too many open files) is exit status 2 with one line naming the address, the layout or
  the file: never a traceback, and never a hang (a FIFO is refused before it is read).
- Every range is checked against the layout before anything is read or allocated, and
  reads go in bounded chunks: a huge length costs nothing but the output it produces.
- The inspector never dies of a signal when the file shrinks under it. Plain reads,
  search, hexdump and write use ``pread``/``pwrite`` (`FileRegion`; one descriptor for
  the whole layout), which cannot fault: past the file's new end they see zeros, and
  after each chunk the inspector checks the file's size and stops with exit status 2 if
  it no longer holds the layout. Atomic reads need a mapping; they are made in a helper
  process (`vm_memory_tools.atomic_sampler`), so SIGBUS from a shrinking file ends the
  helper, and the inspector reports it (exit status 2).
- What is not guaranteed: bytes read while another process rewrites them are whatever
  was there at that instant (only ``--atomic`` values are untorn), and a file that
  shrinks and grows back between a read and the size check reads as zeros unnoticed.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import stat
import struct
import sys
import time
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self, TextIO

from vm_memory.address import GuestAddress
from vm_memory.byte_valued import ScalarValue
from vm_memory.endian import Be16, Be32, Be64, Le16, Le32, Le64
from vm_memory.errors import GuestMemoryError, ReadOnlyRegion, RegionOverlap
from vm_memory.file_region import FileRegion
from vm_memory.guest_memory import GuestMemory
from vm_memory_tools.atomic_sampler import (
    ATOMIC_TYPES,
    AtomicSampler,
    SamplerDied,
    file_size,
    type_size,
)

__all__ = [
    "READ_TYPES",
    "InspectError",
    "LayoutEntry",
    "RamFile",
    "add_inspect_arguments",
    "inspect_main",
    "open_ram_file",
    "parse_layout",
    "parse_number",
]

EXIT_NOT_FOUND: Final = 1
EXIT_BAD_INPUT: Final = 2
EXIT_INTERRUPTED: Final = 130
_ADDRESS_LIMIT: Final = 1 << 64
_CHUNK: Final = 1 << 20
"""Bytes read at a time by hexdump and search (a multiple of the line width)."""
_BATCH: Final = 4096
"""Values ``read`` takes at a time: one ``pread`` (or one request to the atomic-read
helper) for each batch."""
_HEXDUMP_WIDTH: Final = 16
_LAYOUT_SHOWN: Final = 4
"""Layout entries named in a message; longer layouts are summarised."""
_SUFFIXES: Final = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

READ_TYPES: Final[dict[str, type[ScalarValue[int]]]] = {
    **ATOMIC_TYPES,
    "le16": Le16, "le32": Le32, "le64": Le64, "be16": Be16, "be32": Be32, "be64": Be64,
}
"""The value types ``read`` knows (u/i are native: little-endian on x86)."""


class InspectError(Exception):
    """Bad input, or a file that changed under us: reported as one line, exit status 2."""


def parse_number(text: str, what: str = "number") -> int:
    """An unsigned 64-bit number: decimal, ``0x`` hex, ``0o``/``0b``, or a K/M/G/T size."""
    cleaned = text.strip().replace("_", "")
    multiplier = 1
    if cleaned[-1:].lower() in _SUFFIXES:
        multiplier = _SUFFIXES[cleaned[-1].lower()]
        cleaned = cleaned[:-1]
    try:
        value = int(cleaned, 0) * multiplier
    except ValueError:
        raise InspectError(f"{what} {text!r} is not a number") from None
    if not 0 <= value < _ADDRESS_LIMIT:
        raise InspectError(f"{what} {text!r} is not in [0, 2**64)")
    return value


def _parse_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise InspectError(f"--watch interval {text!r} is not a number of seconds") from None
    if not 0 < seconds < 1e6:
        raise InspectError(f"--watch interval {text!r} is not in (0, 1e6) seconds")
    return seconds


@dataclass(frozen=True)
class LayoutEntry:
    """One region of the layout: guest ``[start, start + size)`` from file ``offset``."""

    start: int
    size: int
    offset: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def __str__(self) -> str:
        return f"{self.start:#x}-{self.end - 1:#x} @ file {self.offset:#x}"


def parse_layout(text: str) -> list[LayoutEntry]:
    """``START:SIZE[@OFFSET],...`` (numbers as in `parse_number`; OFFSET defaults to 0)."""
    entries: list[LayoutEntry] = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*([^:@\s]+)\s*:\s*([^:@\s]+)\s*(?:@\s*([^:@\s]+))?\s*", item)
        if match is None:
            raise InspectError(f"layout entry {item!r} is not START:SIZE[@OFFSET]")
        start = parse_number(match[1], "region start")
        size = parse_number(match[2], "region size")
        offset = parse_number(match[3], "file offset") if match[3] else 0
        if size == 0:
            raise InspectError(f"layout entry {item!r} has size 0")
        if start + size > _ADDRESS_LIMIT:
            raise InspectError(f"layout entry {item!r} passes the end of the 64-bit space")
        entries.append(LayoutEntry(start, size, offset))
    return entries


def describe_layout(entries: list[LayoutEntry]) -> str:
    """The layout in one line, for messages (a long one summarised)."""
    shown = ", ".join(str(entry) for entry in entries[:_LAYOUT_SHOWN])
    if len(entries) > _LAYOUT_SHOWN:
        shown += f", ... ({len(entries)} regions up to {entries[-1].end - 1:#x})"
    return "layout " + shown


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def _refuse_unreadable_kind(path: str, mode: int) -> None:
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise InspectError(f"{path} is {_file_kind(mode)}: the inspector reads regular files "
                           "and block devices")


@dataclass
class RamFile:
    """A RAM file opened as guest memory: one descriptor, one `FileRegion` per layout
    entry, all reading through it (``pread``/``pwrite``: a file that shrinks under a read
    cannot fault)."""

    path: str
    fd: int
    size: int
    """The file's size when it was opened."""
    layout: list[LayoutEntry]
    """Sorted by guest address."""
    memory: GuestMemory
    writable: bool
    closed: bool = field(default=False, init=False)

    @property
    def needed_size(self) -> int:
        """How long the file must be for the layout: the end of its last region."""
        return max(entry.offset + entry.size for entry in self.layout)

    def check_size(self, what: str) -> None:
        """Refuse to go on with a file that no longer holds the layout (another process
        shrank it: the bytes past its end read as zeros)."""
        now = file_size(self.fd)
        if now < self.needed_size:
            raise InspectError(
                f"{what}: {self.path} shrank to {now:#x} bytes while it was read (the "
                f"{describe_layout(self.layout)} needs {self.needed_size:#x}); bytes past "
                "its end read as zeros")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def open_ram_file(path: str, layout: list[LayoutEntry] | None = None, *,
                  writable: bool = False) -> RamFile:
    """Open ``path`` as guest memory with ``layout`` (None: all of it at guest 0),
    read-only unless ``writable``. Refuses (`InspectError`) what is not a regular file or
    a block device before opening it, and again after (the path may have changed)."""
    try:
        _refuse_unreadable_kind(path, os.stat(path).st_mode)
        fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_NONBLOCK |
                     os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as error:
        raise InspectError(f"cannot open {path}: {error.strerror}") from None
    try:
        _refuse_unreadable_kind(path, os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
        size = file_size(fd)
        if layout is None:
            if size == 0:
                raise InspectError(f"{path} is empty: nothing to map")
            layout = [LayoutEntry(0, size, 0)]
        for entry in layout:
            if entry.offset + entry.size > size:
                raise InspectError(
                    f"region {entry} reaches file offset {entry.offset + entry.size:#x}, past "
                    f"the end of {path} ({size:#x} bytes) in {describe_layout(layout)}")
        regions = [FileRegion(fd, GuestAddress(entry.start), entry.size,
                              file_offset=entry.offset, read_only=not writable)
                   for entry in layout]
        try:
            memory = GuestMemory(regions)
        except RegionOverlap as error:
            raise InspectError(f"{describe_layout(layout)}: {error}") from None
        return RamFile(path, fd, size, sorted(layout, key=lambda entry: entry.start), memory,
                       writable)
    except BaseException:
        os.close(fd)
        raise


@dataclass
class _Session:
    """An opened RAM file, where to print, and the atomic-read helper once needed."""

    ram: RamFile
    out: TextIO
    err: TextIO
    sampler: AtomicSampler | None = None
    starts: list[int] = field(init=False)
    """The regions' guest starts, in order (for `entry_at`)."""

    def __post_init__(self) -> None:
        self.starts = [entry.start for entry in self.ram.layout]

    @property
    def layout(self) -> list[LayoutEntry]:
        return self.ram.layout

    def entry_at(self, address: int) -> LayoutEntry | None:
        index = bisect_right(self.starts, address) - 1
        if index >= 0 and address < self.layout[index].end:
            return self.layout[index]
        return None

    def require_start(self, address: int, what: str) -> LayoutEntry:
        entry = self.entry_at(address)
        if entry is None:
            raise InspectError(f"{what}: address {address:#x} is outside the "
                               f"{describe_layout(self.layout)}")
        return entry

    def require_range(self, address: int, length: int, what: str) -> None:
        if address + length > _ADDRESS_LIMIT:
            raise InspectError(f"{what} at {address:#x} (+{length:#x}) passes 2**64")
        self.require_start(address, what)
        backed, _ = self.backed(address, length)
        if backed < length:
            raise InspectError(
                f"{what}: {address:#x}-{address + length - 1:#x} runs past the regions of "
                f"the {describe_layout(self.layout)}")

    def backed(self, address: int, length: int) -> tuple[int, str]:
        """How many bytes from ``address`` (at most ``length``) the layout holds without a
        hole, and what stops it there."""
        end = address
        for entry in self.layout:
            if entry.end <= end:
                continue
            if entry.start > end:
                return min(end - address, length), f"a hole up to {entry.start - 1:#x}"
            end = entry.end
            if end - address >= length:
                return length, ""
        return min(end - address, length), "the end of the layout"

    def file_offset(self, address: int) -> int:
        entry = self.require_start(address, "file offset")
        return entry.offset + address - entry.start

    def atomic_read(self, type_name: str, addresses: list[int]) -> list[int]:
        if self.sampler is None:
            self.sampler = AtomicSampler(self.ram.fd)
        try:
            return self.sampler.read(type_name, [self.file_offset(at) for at in addresses])
        except SamplerDied as died:
            if died.bus_error:
                raise InspectError(
                    f"read --atomic at {addresses[0]:#x}: {self.ram.path} shrank under the "
                    "mapping of the atomic-read helper process, which died of SIGBUS; no "
                    "value was read") from None
            raise InspectError(f"read --atomic at {addresses[0]:#x}: {died}") from None
        except ValueError as refused:
            raise InspectError(f"read --atomic at {addresses[0]:#x}: {refused}") from None

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
        self.ram.close()


def _show_map(session: _Session) -> int:
    out, ram = session.out, session.ram
    mode = "read-write (--writable)" if ram.writable else "read-only"
    print(f"{ram.path}: {ram.size:,} bytes, opened {mode}", file=out)
    print(f"  {'':6} {'guest start':>18}  {'guest end':>18}  {'size':>14}  file offset",
          file=out)
    previous_end: int | None = None
    for index, entry in enumerate(session.layout):
        if previous_end is not None and entry.start > previous_end:
            print(f"  {'hole':6} {previous_end:#18x}  {entry.start - 1:#18x}  "
                  f"{_size_text(entry.start - previous_end):>14}", file=out)
        print(f"  {f'#{index}':6} {entry.start:#18x}  {entry.end - 1:#18x}  "
              f"{_size_text(entry.size):>14}  {entry.offset:#x}", file=out)
        previous_end = entry.end
    total = sum(entry.size for entry in session.layout)
    print(f"  {len(session.layout)} region(s), {_size_text(total)} of guest memory", file=out)
    return 0


def _size_text(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size:#x} B"


def _hexdump_line(address: int, width: int, chunk: bytes) -> str:
    hex_bytes = [f"{byte:02x}" for byte in chunk]
    hex_bytes += ["  "] * (_HEXDUMP_WIDTH - len(chunk))
    half = _HEXDUMP_WIDTH // 2
    text = "".join(chr(byte) if 0x20 <= byte < 0x7F else "." for byte in chunk)
    return (f"{address:0{width}x}  {' '.join(hex_bytes[:half])}  "
            f"{' '.join(hex_bytes[half:])}  |{text}|")


def _hexdump(session: _Session, address: int, length: int, squeeze: bool) -> int:
    if address + length > _ADDRESS_LIMIT:
        raise InspectError(f"hexdump at {address:#x} (+{length:#x}) passes 2**64")
    session.require_start(address, "hexdump")
    available, stop = session.backed(address, length)
    end = address + available
    width = max(8, len(f"{address + length:x}"))
    previous: bytes | None = None
    squeezing = False
    position = address
    while position < end:
        size = min(_CHUNK, end - position)
        data = session.ram.memory.read_bytes(GuestAddress(position), size)
        session.ram.check_size("hexdump")
        lines: list[str] = []
        for offset in range(0, size, _HEXDUMP_WIDTH):
            line = data[offset:offset + _HEXDUMP_WIDTH]
            at = position + offset
            if squeeze and line == previous and at + _HEXDUMP_WIDTH < end:
                if not squeezing:
                    lines.append("*")
                    squeezing = True
                continue
            lines.append(_hexdump_line(at, width, line))
            previous, squeezing = line, False
        if lines:
            print("\n".join(lines), file=session.out)
        position += size
    if available < length:
        raise InspectError(
            f"hexdump stops at {end:#x}, {stop}: {length - available:#x} of the {length:#x} "
            f"bytes asked for from {address:#x} are not in the {describe_layout(session.layout)}")
    return 0


def _read(session: _Session, type_name: str, address: int, count: int, atomic: bool,
          watch: float | None, samples: int | None) -> int:
    size = type_size(type_name)
    if atomic and type_name not in ATOMIC_TYPES:
        raise InspectError(f"--atomic reads native types ({', '.join(ATOMIC_TYPES)}), "
                           f"not {type_name}")
    if samples is not None and watch is None:
        raise InspectError("--samples counts the readings of --watch; give --watch SECONDS")
    session.require_range(address, size * count, f"read {type_name}")
    if atomic:
        _check_atomic_placement(session, type_name, size, address, count)
    started = time.monotonic()
    taken = 0
    try:
        while True:
            reading = time.monotonic()
            prefix = "" if watch is None else f"{reading - started:9.3f}s  "
            _print_values(session, type_name, address, count, atomic, prefix)
            taken += 1
            if watch is None or taken == samples:
                return 0
            session.out.flush()
            # Readings start at least `watch` apart, however long one takes.
            time.sleep(max(0.0, reading + watch - time.monotonic()))
    except KeyboardInterrupt:
        if watch is None:
            raise
        print(f"stopped after {taken} reading(s)", file=session.err)
        return 0


def _check_atomic_placement(session: _Session, type_name: str, size: int, address: int,
                            count: int) -> None:
    """Every value aligned in guest memory and in the file, and inside one region
    (checked once per region the values cover, not once per value)."""
    if address % size:
        raise InspectError(f"--atomic: address {address:#x} is not aligned to {size} bytes "
                           f"(an atomic {type_name} needs natural alignment)")
    end = address + size * count
    for entry in session.layout:
        low, high = max(entry.start, address), min(entry.end, end)
        if low >= high:
            continue
        first = low + (address - low) % size  # the first value that starts in this entry
        if first < high and (entry.offset - entry.start) % size:
            raise InspectError(f"--atomic: address {first:#x} is at file offset "
                               f"{entry.offset + first - entry.start:#x}, not aligned to "
                               f"{size} bytes: no atomic load can read it")
        if high < end and (high - address) % size:
            raise InspectError(f"--atomic: the {type_name} at {high - (high - address) % size:#x}"
                               f" crosses the end of region {entry}: one atomic load cannot "
                               "span two regions")


def _print_values(session: _Session, type_name: str, address: int, count: int, atomic: bool,
                  prefix: str) -> None:
    size = type_size(type_name)
    mask = (1 << (8 * size)) - 1
    for batch_start in range(0, count, _BATCH):
        addresses = [address + index * size
                     for index in range(batch_start, min(count, batch_start + _BATCH))]
        if atomic:
            values = session.atomic_read(type_name, addresses)
        else:  # one read for the batch (it may span regions), decoded at once
            data = session.ram.memory.read_bytes(GuestAddress(addresses[0]), size * len(addresses))
            session.ram.check_size(f"read {type_name}")
            values = list(_batch_format(type_name, len(addresses)).unpack(data))
        print("\n".join(f"{prefix}{at:#x}  {type_name}  {value}  "
                        f"{value & mask:#0{2 * size + 2}x}"
                        for at, value in zip(addresses, values, strict=True)), file=session.out)


def _batch_format(type_name: str, count: int) -> struct.Struct:
    """``count`` values of ``type_name`` (``u32``, ``le16``, ``be64``...) as a struct."""
    order = {"le": "<", "be": ">"}.get(type_name[:2], "=")
    code = {1: "b", 2: "h", 4: "i", 8: "q"}[type_size(type_name)]
    return struct.Struct(f"{order}{count}{code if type_name[0] == 'i' else code.upper()}")


def _parse_pattern(text: str, as_text: bool) -> bytes:
    if as_text:
        pattern = text.encode()
    else:
        digits = re.sub(r"[\s:,]", "", text.removeprefix("0x"))
        try:
            pattern = bytes.fromhex(digits)
        except ValueError:
            raise InspectError(f"pattern {text!r} is not hex bytes (e.g. 'de ad be ef'); "
                               "use --text for a string") from None
    if not pattern:
        raise InspectError("the pattern is empty")
    return pattern


def _contiguous_runs(layout: list[LayoutEntry]) -> Iterator[tuple[int, int]]:
    """Guest ranges ``[start, end)`` with no hole inside (adjacent regions merged)."""
    run_start: int | None = None
    run_end = 0
    for entry in layout:
        if run_start is not None and entry.start == run_end:
            run_end += entry.size
            continue
        if run_start is not None:
            yield run_start, run_end
        run_start, run_end = entry.start, entry.end
    if run_start is not None:
        yield run_start, run_end


def _search(session: _Session, pattern: bytes, limit: int) -> int:
    found = 0
    for start, end in _contiguous_runs(session.layout):
        position = start
        while position < end:
            window_end = min(position + _CHUNK + len(pattern) - 1, end)
            data = session.ram.memory.read_bytes(GuestAddress(position), window_end - position)
            session.ram.check_size("search")
            index = data.find(pattern)
            while index != -1 and index < _CHUNK:
                if found == limit:
                    print(f"... more matches (raise --max {limit} to see them)",
                          file=session.out)
                    return 0
                match = position + index
                print(f"{match:#x}  (file offset {session.file_offset(match):#x})",
                      file=session.out)
                found += 1
                index = data.find(pattern, index + 1)
            position += _CHUNK
    if not found:
        print(f"no match for {pattern.hex(' ')} in the {describe_layout(session.layout)}",
              file=session.out)
        return EXIT_NOT_FOUND
    print(f"{found} match(es)", file=session.out)
    return 0


def _write(session: _Session, address: int, data: bytes) -> int:
    session.require_range(address, len(data), "write")
    if session.ram.writable:  # pwrite past a shrunk file's end would grow it back
        session.ram.check_size("write")
    try:
        session.ram.memory.write_slice(GuestAddress(address), data)
    except ReadOnlyRegion:
        raise InspectError(f"write at {address:#x}: {session.ram.path} is opened read-only "
                           "(the default); pass --writable to change the file") from None
    print(f"wrote {len(data)} byte(s) at {address:#x}", file=session.out)
    return 0


def _add_file_options(parser: argparse.ArgumentParser, *, suppress_defaults: bool) -> None:
    default_layout = argparse.SUPPRESS if suppress_defaults else None
    default_writable = argparse.SUPPRESS if suppress_defaults else False
    parser.add_argument("--layout", default=default_layout, metavar="START:SIZE[@OFFSET],...",
                        help="where the file's bytes sit in guest physical memory (numbers "
                             "in decimal, 0x hex or with K/M/G; default: the whole file at 0)")
    parser.add_argument("--writable", action="store_true", default=default_writable,
                        help="open the file read-write (needed by 'write'; changes the file)")


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``inspect`` subcommand's arguments."""
    parser.add_argument("file", metavar="FILE", help="the RAM file (or a block device)")
    _add_file_options(parser, suppress_defaults=False)
    commands = parser.add_subparsers(dest="action", required=True)
    map_parser = commands.add_parser("map", help="show the regions and holes")
    hexdump = commands.add_parser("hexdump", help="dump a guest-physical range")
    hexdump.add_argument("address", metavar="ADDR")
    hexdump.add_argument("length", metavar="LEN")
    hexdump.add_argument("-v", "--all-lines", action="store_true",
                         help="show every line (by default a repeated line becomes '*')")
    read = commands.add_parser("read", help="read typed values")
    read.add_argument("type", metavar="TYPE", choices=list(READ_TYPES),
                      help="one of " + ", ".join(READ_TYPES))
    read.add_argument("address", metavar="ADDR")
    read.add_argument("--count", default="1", metavar="N", help="consecutive values to read")
    read.add_argument("--atomic", action="store_true",
                      help="one atomic load per value (native types, aligned addresses)")
    read.add_argument("--watch", metavar="SECONDS",
                      help="read again every SECONDS until interrupted (Ctrl-C)")
    read.add_argument("--samples", metavar="N", help="with --watch: stop after N readings")
    search = commands.add_parser("search", help="find a byte pattern")
    search.add_argument("pattern", metavar="PATTERN",
                        help="hex bytes, e.g. 'de ad be ef' or deadbeef")
    search.add_argument("--text", action="store_true", help="PATTERN is text (UTF-8)")
    search.add_argument("--max", default="100", metavar="N", help="matches to show")
    write = commands.add_parser("write", help="write hex bytes (needs --writable)")
    write.add_argument("address", metavar="ADDR")
    write.add_argument("data", metavar="BYTES", help="hex bytes")
    for sub in (map_parser, hexdump, read, search, write):
        _add_file_options(sub, suppress_defaults=True)


def _run_action(session: _Session, arguments: argparse.Namespace) -> int:
    action: str = arguments.action
    if action == "map":
        return _show_map(session)
    if action == "hexdump":
        return _hexdump(session, parse_number(arguments.address, "address"),
                        parse_number(arguments.length, "length"), not arguments.all_lines)
    if action == "read":
        return _read(session, arguments.type, parse_number(arguments.address, "address"),
                     parse_number(arguments.count, "count"), arguments.atomic,
                     None if arguments.watch is None else _parse_seconds(arguments.watch),
                     None if arguments.samples is None
                     else parse_number(arguments.samples, "--samples"))
    if action == "search":
        return _search(session, _parse_pattern(arguments.pattern, arguments.text),
                       parse_number(arguments.max, "--max"))
    return _write(session, parse_number(arguments.address, "address"),
                  _parse_pattern(arguments.data, as_text=False))


def inspect_main(arguments: argparse.Namespace, out: TextIO | None = None,
                 err: TextIO | None = None) -> int:
    """Run one ``inspect`` command; 0 on success, 1 for a search with no match, 2 for
    bad input or a file that changed under the command."""
    stdout = sys.stdout if out is None else out
    stderr = sys.stderr if err is None else err
    try:
        layout = None if arguments.layout is None else parse_layout(arguments.layout)
        session = _Session(open_ram_file(arguments.file, layout, writable=arguments.writable),
                           stdout, stderr)
        try:
            return _run_action(session, arguments)
        finally:
            session.close()
    except InspectError as error:
        message = str(error)
    except GuestMemoryError as error:  # a typed refusal the checks above did not foresee
        message = f"{type(error).__name__}: {error}"
    except OSError as error:
        if error.errno == errno.EPIPE:  # the reader of our output went away (| head)
            return 0
        if error.errno in (errno.EMFILE, errno.ENFILE):
            message = f"too many open files ({error.strerror}): raise the limit (ulimit -n)"
        else:
            message = f"{error.strerror or error}" + (
                f": {error.filename}" if error.filename else "")
    except KeyboardInterrupt:
        print("vm-memory inspect: interrupted", file=stderr)
        return EXIT_INTERRUPTED
    print(f"vm-memory inspect: error: {message}", file=stderr)
    return EXIT_BAD_INPUT
