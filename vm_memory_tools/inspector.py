"""``vm-memory inspect``: look inside a VM's RAM file as guest physical memory.

A RAM file (a QEMU ``memory-backend-file`` under /dev/shm, a memory dump, a snapshot)
is mapped read-only by default (`MmapRegion.from_file(..., read_only=True)`) as one or
more regions placed by ``--layout START:SIZE[@OFFSET],...`` (default: one region at
guest 0 covering the whole file). Subcommands:

- ``map``: the regions, the holes between them and the file offsets behind them;
- ``hexdump ADDR LEN``: a guest-physical range, across adjacent regions;
- ``read TYPE ADDR [--count N] [--atomic]``: typed values (``u8..u64``, ``i8..i64``,
  ``le16..le64``, ``be16..be64``); ``--atomic`` reads each native value with one atomic
  load, the way to sample a live guest's counters and flags without a torn value;
- ``search PATTERN [--text] [--max N]``: every guest address where a byte pattern starts,
  also across adjacent regions (exit 1 when there is none, like grep);
- ``write ADDR BYTES``: only with ``--writable`` (changes the file).

Bad input (an address outside the layout, a layout past the end of the file,
overlapping regions) is exit status 2 with a message naming the address and the layout.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, TextIO

from vm_memory.address import GuestAddress
from vm_memory.aligned_address import AlignedGuestAddress
from vm_memory.atomic_access import AtomicInteger
from vm_memory.byte_valued import ScalarValue
from vm_memory.endian import Be16, Be32, Be64, Le16, Le32, Le64
from vm_memory.errors import GuestMemoryError, MisalignedAddress, ReadOnlyRegion
from vm_memory.guest_memory import GuestMemory
from vm_memory.mmap_memory import GuestMemoryMmap
from vm_memory.mmap_region import PAGE_SIZE, GuestRegionMmap, MmapRegion

__all__ = [
    "READ_TYPES",
    "InspectError",
    "LayoutEntry",
    "add_inspect_arguments",
    "inspect_main",
    "open_ram_file",
    "parse_layout",
    "parse_number",
]

EXIT_NOT_FOUND: Final = 1
EXIT_BAD_INPUT: Final = 2
_ADDRESS_LIMIT: Final = 1 << 64
_SEARCH_CHUNK: Final = 1 << 20
_HEXDUMP_WIDTH: Final = 16
_SUFFIXES: Final = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

READ_TYPES: Final[dict[str, type[ScalarValue[int]]]] = {
    "u8": ctypes.c_uint8, "u16": ctypes.c_uint16, "u32": ctypes.c_uint32,
    "u64": ctypes.c_uint64,
    "i8": ctypes.c_int8, "i16": ctypes.c_int16, "i32": ctypes.c_int32, "i64": ctypes.c_int64,
    "le16": Le16, "le32": Le32, "le64": Le64, "be16": Be16, "be32": Be32, "be64": Be64,
}
"""The value types ``read`` knows (u/i are native: little-endian on x86)."""


def _atomic_reader(ctype: type[AtomicInteger]) -> Callable[[GuestMemory, int], int]:
    def read(memory: GuestMemory, address: int) -> int:
        return memory.read_atomic(AlignedGuestAddress.new(ctype, GuestAddress(address)))
    return read


_ATOMIC_READERS: Final[dict[str, Callable[[GuestMemory, int], int]]] = {
    "u8": _atomic_reader(ctypes.c_uint8), "u16": _atomic_reader(ctypes.c_uint16),
    "u32": _atomic_reader(ctypes.c_uint32), "u64": _atomic_reader(ctypes.c_uint64),
    "i8": _atomic_reader(ctypes.c_int8), "i16": _atomic_reader(ctypes.c_int16),
    "i32": _atomic_reader(ctypes.c_int32), "i64": _atomic_reader(ctypes.c_int64),
}


class InspectError(Exception):
    """Bad input: reported as one line and exit status 2."""


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


@dataclass(frozen=True)
class LayoutEntry:
    """One region of the layout: guest ``[start, start + size)`` from file ``offset``."""

    start: int
    size: int
    offset: int

    def __str__(self) -> str:
        return f"{self.start:#x}-{self.start + self.size - 1:#x} @ file {self.offset:#x}"


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
    """The layout in one line, for messages."""
    return "layout " + ", ".join(str(entry) for entry in entries)


def open_ram_file(path: str, layout: list[LayoutEntry] | None, *,
                  writable: bool = False) -> tuple[GuestMemoryMmap, list[LayoutEntry]]:
    """Map ``path`` with ``layout`` (None: all of it at guest 0), read-only by default."""
    try:
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    except OSError as error:
        raise InspectError(f"cannot open {path}: {error.strerror}") from None
    try:
        file_size = os.fstat(fd).st_size
        if layout is None:
            if file_size == 0:
                raise InspectError(f"{path} is empty: nothing to map")
            layout = [LayoutEntry(0, file_size, 0)]
        regions: list[GuestRegionMmap] = []
        for entry in layout:
            if entry.offset + entry.size > file_size:
                raise InspectError(
                    f"region {entry} reaches file offset {entry.offset + entry.size:#x}, past "
                    f"the end of {path} ({file_size:#x} bytes) in {describe_layout(layout)}")
            if entry.offset % PAGE_SIZE:
                raise InspectError(f"region {entry}: the file offset must be a multiple of "
                                   f"the page size {PAGE_SIZE:#x}")
            try:
                mapping = MmapRegion.from_file(fd, entry.size, offset=entry.offset,
                                               read_only=not writable)
            except GuestMemoryError as error:
                raise InspectError(f"cannot map region {entry} of {path}: {error}") from None
            regions.append(GuestRegionMmap(mapping, GuestAddress(entry.start)))
        try:
            memory = GuestMemoryMmap.from_regions(regions)
        except GuestMemoryError as error:
            raise InspectError(f"{describe_layout(layout)}: {error}") from None
        return memory, sorted(layout, key=lambda entry: entry.start)
    finally:
        os.close(fd)  # every mapping holds its own duplicate


@dataclass
class _Session:
    """An opened RAM file and where to print."""

    path: str
    memory: GuestMemoryMmap
    layout: list[LayoutEntry]
    writable: bool
    out: TextIO

    def require_range(self, address: int, length: int, what: str) -> None:
        if address + length > _ADDRESS_LIMIT:
            raise InspectError(f"{what} at {address:#x} (+{length:#x}) passes 2**64")
        if not self.memory.check_range(GuestAddress(address), length):
            if self.memory.find_region(GuestAddress(address)) is None:
                raise InspectError(f"{what}: address {address:#x} is outside the "
                                   f"{describe_layout(self.layout)}")
            raise InspectError(
                f"{what}: {address:#x}-{address + length - 1:#x} runs past the regions of "
                f"the {describe_layout(self.layout)}")

    def file_offset(self, address: int) -> int:
        for entry in self.layout:
            if entry.start <= address < entry.start + entry.size:
                return entry.offset + address - entry.start
        raise InspectError(f"address {address:#x} is outside the {describe_layout(self.layout)}")


def _show_map(session: _Session) -> int:
    out = session.out
    size = os.stat(session.path).st_size
    mode = "read-write (--writable)" if session.writable else "read-only"
    print(f"{session.path}: {size:,} bytes, mapped {mode}", file=out)
    print(f"  {'':6} {'guest start':>18}  {'guest end':>18}  {'size':>14}  file offset",
          file=out)
    previous_end: int | None = None
    for index, entry in enumerate(session.layout):
        if previous_end is not None and entry.start > previous_end:
            print(f"  {'hole':6} {previous_end:#18x}  {entry.start - 1:#18x}  "
                  f"{_size_text(entry.start - previous_end):>14}", file=out)
        print(f"  {f'#{index}':6} {entry.start:#18x}  {entry.start + entry.size - 1:#18x}  "
              f"{_size_text(entry.size):>14}  {entry.offset:#x}", file=out)
        previous_end = entry.start + entry.size
    total = sum(entry.size for entry in session.layout)
    print(f"  {len(session.layout)} region(s), {_size_text(total)} of guest memory", file=out)
    return 0


def _size_text(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size:#x} B"


def _hexdump(session: _Session, address: int, length: int) -> int:
    session.require_range(address, length, "hexdump")
    data = session.memory.read_bytes(GuestAddress(address), length)
    width = max(8, len(f"{address + length:x}"))
    for line_start in range(0, length, _HEXDUMP_WIDTH):
        chunk = data[line_start:line_start + _HEXDUMP_WIDTH]
        hex_bytes = [f"{byte:02x}" for byte in chunk]
        hex_bytes += ["  "] * (_HEXDUMP_WIDTH - len(chunk))
        half = _HEXDUMP_WIDTH // 2
        text = "".join(chr(byte) if 0x20 <= byte < 0x7F else "." for byte in chunk)
        print(f"{address + line_start:0{width}x}  {' '.join(hex_bytes[:half])}  "
              f"{' '.join(hex_bytes[half:])}  |{text}|", file=session.out)
    return 0


def _read(session: _Session, type_name: str, address: int, count: int, atomic: bool) -> int:
    ctype = READ_TYPES[type_name]
    size = int(type_name.lstrip("uilbe")) // 8
    session.require_range(address, size * count, f"read {type_name}")
    if atomic and type_name not in _ATOMIC_READERS:
        raise InspectError(f"--atomic reads native types ({', '.join(_ATOMIC_READERS)}), "
                           f"not {type_name}")
    for index in range(count):
        at = address + index * size
        if atomic:
            try:
                value = _ATOMIC_READERS[type_name](session.memory, at)
            except MisalignedAddress:
                raise InspectError(f"--atomic: address {at:#x} is not aligned to {size} bytes "
                                   f"(an atomic {type_name} needs natural alignment)") from None
        else:
            value = session.memory.read_obj_unaligned(GuestAddress(at), ctype)
        hex_digits = 2 * size
        shown = value & ((1 << (8 * size)) - 1)
        print(f"{at:#x}  {type_name}  {value}  {shown:#0{hex_digits + 2}x}", file=session.out)
    return 0


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
        run_start, run_end = entry.start, entry.start + entry.size
    if run_start is not None:
        yield run_start, run_end


def _search(session: _Session, pattern: bytes, limit: int) -> int:
    found = 0
    for start, end in _contiguous_runs(session.layout):
        position = start
        while position < end:
            window_end = min(position + _SEARCH_CHUNK + len(pattern) - 1, end)
            data = session.memory.read_bytes(GuestAddress(position), window_end - position)
            index = data.find(pattern)
            while index != -1 and index < _SEARCH_CHUNK:
                if found == limit:
                    print(f"... more matches (raise --max {limit} to see them)",
                          file=session.out)
                    return 0
                match = position + index
                print(f"{match:#x}  (file offset {session.file_offset(match):#x})",
                      file=session.out)
                found += 1
                index = data.find(pattern, index + 1)
            position += _SEARCH_CHUNK
    if not found:
        print(f"no match for {pattern.hex(' ')} in the {describe_layout(session.layout)}",
              file=session.out)
        return EXIT_NOT_FOUND
    print(f"{found} match(es)", file=session.out)
    return 0


def _write(session: _Session, address: int, data: bytes) -> int:
    session.require_range(address, len(data), "write")
    try:
        session.memory.write_slice(GuestAddress(address), data)
    except ReadOnlyRegion:
        raise InspectError(f"write at {address:#x}: {session.path} is mapped read-only (the "
                           "default); pass --writable to change the file") from None
    print(f"wrote {len(data)} byte(s) at {address:#x}", file=session.out)
    return 0


def _add_file_options(parser: argparse.ArgumentParser, *, suppress_defaults: bool) -> None:
    default_layout = argparse.SUPPRESS if suppress_defaults else None
    default_writable = argparse.SUPPRESS if suppress_defaults else False
    parser.add_argument("--layout", default=default_layout, metavar="START:SIZE[@OFFSET],...",
                        help="where the file's bytes sit in guest physical memory (numbers "
                             "in decimal, 0x hex or with K/M/G; default: the whole file at 0)")
    parser.add_argument("--writable", action="store_true", default=default_writable,
                        help="map the file read-write (needed by 'write'; changes the file)")


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``inspect`` subcommand's arguments."""
    parser.add_argument("file", metavar="FILE", help="the RAM file")
    _add_file_options(parser, suppress_defaults=False)
    commands = parser.add_subparsers(dest="action", required=True)
    map_parser = commands.add_parser("map", help="show the regions and holes")
    hexdump = commands.add_parser("hexdump", help="dump a guest-physical range")
    hexdump.add_argument("address", metavar="ADDR")
    hexdump.add_argument("length", metavar="LEN")
    read = commands.add_parser("read", help="read typed values")
    read.add_argument("type", metavar="TYPE", choices=list(READ_TYPES),
                      help="one of " + ", ".join(READ_TYPES))
    read.add_argument("address", metavar="ADDR")
    read.add_argument("--count", default="1", metavar="N", help="consecutive values to read")
    read.add_argument("--atomic", action="store_true",
                      help="one atomic load per value (native types, aligned addresses)")
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


def inspect_main(arguments: argparse.Namespace, out: TextIO | None = None,
                 err: TextIO | None = None) -> int:
    """Run one ``inspect`` command; 0 on success, 1 for a search with no match, 2 for
    bad input."""
    stdout = sys.stdout if out is None else out
    stderr = sys.stderr if err is None else err
    try:
        layout = None if arguments.layout is None else parse_layout(arguments.layout)
        memory, layout = open_ram_file(arguments.file, layout, writable=arguments.writable)
        session = _Session(arguments.file, memory, layout, arguments.writable, stdout)
        action: str = arguments.action
        if action == "map":
            return _show_map(session)
        if action == "hexdump":
            return _hexdump(session, parse_number(arguments.address, "address"),
                            parse_number(arguments.length, "length"))
        if action == "read":
            count = parse_number(arguments.count, "count")
            return _read(session, arguments.type, parse_number(arguments.address, "address"),
                         count, arguments.atomic)
        if action == "search":
            return _search(session, _parse_pattern(arguments.pattern, arguments.text),
                           parse_number(arguments.max, "--max"))
        return _write(session, parse_number(arguments.address, "address"),
                      _parse_pattern(arguments.data, as_text=False))
    except InspectError as error:
        print(f"vm-memory inspect: error: {error}", file=stderr)
        return EXIT_BAD_INPUT
