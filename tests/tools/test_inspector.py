"""``vm-memory inspect`` on RAM files built here (and, where QEMU exists, one it wrote).

Each subcommand runs through `main([...])` with its output captured and checked line by
line; one run goes through a subprocess as a user types it. The RAM file is laid out so
that a value and a pattern straddle two regions that are adjacent in guest memory but
not in the file: only a search over guest memory (not over the file) finds them.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import pytest
from host_assumptions import WIDE_ATOMIC_BYTES, needs_8_byte_atomics
from support import run_python, unavailable

from vm_memory import GuestAddress, ReadOnlyRegion
from vm_memory_tools.cli import main
from vm_memory_tools.inspector import InspectError, open_ram_file, parse_layout, parse_number

PAGE: Final = 0x1000
# Guest 0x0000-0x0fff <- file 0x1000 (page B); guest 0x1000-0x1fff <- file 0x0000 (page A);
# hole; guest 0x100000-0x100fff <- file 0x2000 (page C).
SWAPPED_LAYOUT: Final = "0:4K@4K,0x1000:4K@0,0x100000:4K@8K"


@pytest.fixture
def ram_file(tmp_path: Path) -> Path:
    data = bytearray(3 * PAGE)
    # Page A (file 0x0000, guest 0x1000 in SWAPPED_LAYOUT).
    data[0x0:0x2] = b"\xbe\xef"  # second half of the straddling pattern
    data[0x10:0x20] = b"Hello, RAM file!"
    struct.pack_into("<Q", data, 0x100, 0x1122_3344_5566_7788)
    struct.pack_into("<i", data, 0x108, -2)
    # Page B (file 0x1000, guest 0x0000 in SWAPPED_LAYOUT).
    data[0x1FFE:0x2000] = b"\xde\xad"  # first half of the straddling pattern
    # Page C (file 0x2000).
    data[0x2000:0x2004] = b"\xde\xad\xbe\xef"
    path = tmp_path / "ram.img"
    path.write_bytes(bytes(data))
    return path


def on_this_host(line: str, ram_file: Path, file_offset: int | None = None) -> str:
    """A `read` line written for a little-endian host, as this host prints it: u16..i64
    are read in the host's byte order (le/be types name theirs). The value is at the
    line's address in the file unless `file_offset` says where (another layout)."""
    address, type_name, _, _ = line.split()
    if sys.byteorder == "little" or type_name[0] not in "ui" or type_name in ("u8", "i8"):
        return line
    size = int(type_name[1:]) // 8
    start = int(address, 16) if file_offset is None else file_offset
    value = int.from_bytes(ram_file.read_bytes()[start:start + size], sys.byteorder,
                           signed=type_name[0] == "i")
    return f"{address}  {type_name}  {value}  0x{value % (1 << 8 * size):0{2 * size}x}"


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    code = main(["inspect", *arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_map_default_layout_is_the_whole_file_read_only(
        ram_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(ram_file), "map")
    assert code == 0
    assert out.splitlines() == [
        f"{ram_file}: 12,288 bytes, opened read-only",
        "                guest start           guest end            size  file offset",
        "  #0                    0x0              0x2fff          12 KiB  0x0",
        "  1 region(s), 12 KiB of guest memory",
    ]


def test_map_shows_regions_holes_and_offsets(ram_file: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(ram_file), "--layout", SWAPPED_LAYOUT, "map")
    assert code == 0
    assert out.splitlines()[2:] == [
        "  #0                    0x0               0xfff           4 KiB  0x1000",
        "  #1                 0x1000              0x1fff           4 KiB  0x0",
        "  hole               0x2000             0xfffff        1016 KiB",
        "  #2               0x100000            0x100fff           4 KiB  0x2000",
        "  3 region(s), 12 KiB of guest memory",
    ]


def test_hexdump_reads_guest_addresses_across_regions(
        ram_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(ram_file), "--layout", SWAPPED_LAYOUT,
                       "hexdump", "0xff8", "0x28")
    assert code == 0
    assert out.splitlines() == [
        "00000ff8  00 00 00 00 00 00 de ad  be ef 00 00 00 00 00 00  |................|",
        "00001008  00 00 00 00 00 00 00 00  48 65 6c 6c 6f 2c 20 52  |........Hello, R|",
        "00001018  41 4d 20 66 69 6c 65 21                           |AM file!|",
    ]


def test_hexdump_shows_a_repeated_line_once_then_a_star(
        ram_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As ``hexdump -C``/``xxd -a``: a run of equal lines is one line and ``*``; the last
    line is always shown, so the end of the range is visible. ``-v`` shows every line."""
    code, out, _ = run(capsys, str(ram_file), "hexdump", "0", "0x1000")
    zeros = "00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|"
    assert (code, out.splitlines()) == (0, [
        "00000000  be ef 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|",
        "00000010  48 65 6c 6c 6f 2c 20 52  41 4d 20 66 69 6c 65 21  |Hello, RAM file!|",
        f"00000020  {zeros}",
        "*",
        "00000100  88 77 66 55 44 33 22 11  fe ff ff ff 00 00 00 00  |.wfUD3\".........|",
        f"00000110  {zeros}",
        "*",
        f"00000ff0  {zeros}",
    ])
    code, out, _ = run(capsys, str(ram_file), "hexdump", "0x20", "0x40")
    assert (code, out.splitlines()) == (0, [f"00000020  {zeros}", "*", f"00000050  {zeros}"])
    code, out, _ = run(capsys, str(ram_file), "hexdump", "-v", "0x20", "0x40")
    assert (code, out.splitlines()) == (0, [f"{at:08x}  {zeros}" for at in range(0x20, 0x60, 16)])


def test_hexdump_into_a_hole_dumps_up_to_it_and_says_where_it_stopped(
        ram_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout = ("--layout", SWAPPED_LAYOUT)
    code, out, err = run(capsys, str(ram_file), *layout, "hexdump", "0x1fe8", "0x20")
    assert code == 2
    assert out.splitlines() == [
        "00001fe8  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|",
        "00001ff8  00 00 00 00 00 00 00 00                           |........|",
    ]
    assert err.startswith("vm-memory inspect: error: hexdump stops at 0x2000, a hole up to "
                          "0xfffff: 0x8 of the 0x20 bytes asked for from 0x1fe8 are not in "
                          "the layout 0x0-0xfff @ file 0x1000")
    code, out, err = run(capsys, str(ram_file), *layout, "hexdump", "0x100ff8", "1G")
    assert (code, len(out.splitlines())) == (2, 1)
    assert "hexdump stops at 0x101000, the end of the layout: 0x3ffffff8 of the 0x40000000 " \
           "bytes asked for from 0x100ff8" in err


def test_read_every_type_family(ram_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = str(ram_file)
    cases = {
        ("u8", "0x100"): "0x100  u8  136  0x88",
        ("u16", "0x100"): "0x100  u16  30600  0x7788",
        ("u32", "0x100"): "0x100  u32  1432778632  0x55667788",
        ("u64", "0x100"): "0x100  u64  1234605616436508552  0x1122334455667788",
        ("i8", "0x108"): "0x108  i8  -2  0xfe",
        ("i16", "0x108"): "0x108  i16  -2  0xfffe",
        ("i32", "0x108"): "0x108  i32  -2  0xfffffffe",
        ("i64", "0x108"): "0x108  i64  4294967294  0x00000000fffffffe",
        ("le16", "0x100"): "0x100  le16  30600  0x7788",
        ("le32", "0x100"): "0x100  le32  1432778632  0x55667788",
        ("le64", "0x100"): "0x100  le64  1234605616436508552  0x1122334455667788",
        ("be16", "0x100"): "0x100  be16  34935  0x8877",
        ("be32", "0x100"): "0x100  be32  2289526357  0x88776655",
        ("be64", "0x100"): "0x100  be64  9833440827789222417  0x8877665544332211",
    }
    for (type_name, address), expected in cases.items():
        code, out, _ = run(capsys, file, "read", type_name, address)
        assert (code, out.strip()) == (0, on_this_host(expected, ram_file))


@needs_8_byte_atomics
def test_read_count_unaligned_across_regions_and_atomic(
        ram_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = str(ram_file)
    code, out, _ = run(capsys, file, "read", "u16", "0x100", "--count", "3")
    assert (code, out.splitlines()) == (0, [on_this_host(line, ram_file) for line in (
        "0x100  u16  30600  0x7788", "0x102  u16  21862  0x5566", "0x104  u16  13124  0x3344")])
    # A big-endian u32 straddling two regions that are not neighbours in the file.
    code, out, _ = run(capsys, file, "--layout", SWAPPED_LAYOUT, "read", "be32", "0xffe")
    assert (code, out.strip()) == (0, "0xffe  be32  3735928559  0xdeadbeef")
    code, out, _ = run(capsys, file, "read", "--atomic", "u64", "0x100")
    assert (code, out.strip()) == (0, on_this_host(
        "0x100  u64  1234605616436508552  0x1122334455667788", ram_file))
    code, _, err = run(capsys, file, "read", "--atomic", "u64", "0x104")
    assert code == 2
    assert "--atomic: address 0x104 is not aligned to 8 bytes" in err
    code, _, err = run(capsys, file, "read", "--atomic", "be32", "0x100")
    assert code == 2 and "not be32" in err


def test_atomic_reads_need_alignment_in_the_file_and_one_region(
        ram_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A guest address aligned for the type is not enough: the file offset behind it is
    what the helper's mapping loads from, and one load cannot span two regions. (With
    the widest atomic this host does: u64, or u32 where 8 bytes are refused.)"""
    file = str(ram_file)
    size, name = WIDE_ATOMIC_BYTES, f"u{8 * WIDE_ATOMIC_BYTES}"
    value = int.from_bytes(ram_file.read_bytes()[0x100:0x100 + size], sys.byteorder)
    code, out, _ = run(capsys, file, "--layout", "0:0x20@0x100", "read", "--atomic", name, "0")
    assert (code, out.strip()) == (0, f"0x0  {name}  {value}  {value:#0{2 + 2 * size}x}")
    half = 0x100 + size // 2  # a file offset, or a region's end, half-way into the value
    code, _, err = run(capsys, file, "--layout", f"0:0x20@{half:#x}", "read", "--atomic",
                       name, "0")
    assert code == 2
    assert (f"--atomic: address 0x0 is at file offset {half:#x}, not aligned to {size} "
            "bytes") in err
    code, _, err = run(capsys, file, "--layout", f"0:{half:#x},{half:#x}:0x100@{half:#x}",
                       "read", "--atomic", name, hex(0x100 - size), "--count", "2")
    assert code == 2
    assert f"the {name} at 0x100 crosses the end of region 0x0-{half - 1:#x} @ file 0x0" in err
    code, out, _ = run(capsys, file, "--layout", "0:0x104,0x104:0x100@0x104", "read",
                       "--atomic", "u32", "0x100", "--count", "2")
    assert (code, out.splitlines()) == (0, [on_this_host(line, ram_file) for line in (
        "0x100  u32  1432778632  0x55667788", "0x104  u32  287454020  0x11223344")])


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_watch_reads_again_until_the_sample_count(
        ram_file: Path, capsys: pytest.CaptureFixture[str], atomic: bool) -> None:
    options = ["--atomic"] * atomic
    code, out, _ = run(capsys, str(ram_file), "read", *options, "u32", "0x100", "--watch",
                       "0.01", "--samples", "3")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3
    times: list[float] = []
    for line in lines:
        elapsed, rest = line.split("s  ", 1)
        assert rest == on_this_host("0x100  u32  1432778632  0x55667788", ram_file)
        times.append(float(elapsed))
    # New readings, at least the interval apart (less the 1 ms the rounding may take).
    assert times[1] - times[0] >= 0.009 and times[2] - times[1] >= 0.009
    code, _, err = run(capsys, str(ram_file), "read", "u32", "0x100", "--samples", "2")
    assert code == 2 and "--samples counts the readings of --watch" in err


def test_search_finds_patterns_across_region_boundaries(
        ram_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = str(ram_file)
    code, out, _ = run(capsys, file, "--layout", SWAPPED_LAYOUT, "search", "de ad be ef")
    assert code == 0
    assert out.splitlines() == ["0xffe  (file offset 0x1ffe)",
                                "0x100000  (file offset 0x2000)",
                                "2 match(es)"]
    # Searched as one flat file, the straddling copy does not exist.
    code, out, _ = run(capsys, file, "search", "deadbeef")
    assert (code, out.splitlines()) == (0, ["0x2000  (file offset 0x2000)", "1 match(es)"])
    code, out, _ = run(capsys, file, "search", "--text", "RAM file")
    assert (code, out.splitlines()[0]) == (0, "0x17  (file offset 0x17)")
    code, out, _ = run(capsys, file, "--layout", SWAPPED_LAYOUT, "search", "de:ad",
                       "--max", "1")
    assert (code, out.splitlines()) == (0, ["0xffe  (file offset 0x1ffe)",
                                            "... more matches (raise --max 1 to see them)"])


def test_search_with_no_match_exits_1(ram_file: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(ram_file), "search", "0102030405")
    assert code == 1
    assert out.strip() == "no match for 01 02 03 04 05 in the layout 0x0-0x2fff @ file 0x0"


def test_addresses_outside_the_layout_exit_2_naming_address_and_layout(
        ram_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = str(ram_file)
    code, out, err = run(capsys, file, "--layout", SWAPPED_LAYOUT, "hexdump", "0x2000", "16")
    assert (code, out) == (2, "")
    assert err.strip() == (
        "vm-memory inspect: error: hexdump: address 0x2000 is outside the layout "
        "0x0-0xfff @ file 0x1000, 0x1000-0x1fff @ file 0x0, 0x100000-0x100fff @ file 0x2000")
    code, _, err = run(capsys, file, "--layout", SWAPPED_LAYOUT, "read", "u32", "0x1ffe")
    assert code == 2
    assert "read u32: 0x1ffe-0x2001 runs past the regions of the layout" in err
    code, _, err = run(capsys, file, "read", "u64", "0xffffffffffffffff")
    assert code == 2 and "passes 2**64" in err
    code, _, err = run(capsys, file, "hexdump", "0x10000000000000000", "1")
    assert code == 2 and "is not in [0, 2**64)" in err


def test_bad_layouts_exit_2(ram_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = str(ram_file)
    expectations = {
        "0:16K": "region 0x0-0x3fff @ file 0x0 reaches file offset 0x4000, past the end of "
                 f"{file} (0x3000 bytes) in layout 0x0-0x3fff @ file 0x0",
        "0:4K,0x800:4K@4K": "region [0x0, +0x1000) overlaps region [0x800, +0x1000)",
        "0x1000": "layout entry '0x1000' is not START:SIZE[@OFFSET]",
        "0:0": "has size 0",
        "0:zz": "region size 'zz' is not a number",
        "0:8K@6K": "region 0x0-0x1fff @ file 0x1800 reaches file offset 0x3800, past the end",
    }
    for layout, message in expectations.items():
        code, out, err = run(capsys, file, "--layout", layout, "map")
        assert (code, out) == (2, ""), layout
        assert message in err, (layout, err)


def test_a_file_offset_needs_no_page_alignment(ram_file: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Reads are pread: any byte of the file can start a region."""
    code, out, _ = run(capsys, str(ram_file), "--layout", "0x10:0x20@0x10", "search", "--text",
                       "Hello")
    assert (code, out.splitlines()) == (0, ["0x10  (file offset 0x10)", "1 match(es)"])
    code, out, _ = run(capsys, str(ram_file), "--layout", "0:0x10@0x17", "read", "be64", "0")
    value = int.from_bytes(b"RAM file", "big")
    assert (code, out.strip()) == (0, f"0x0  be64  {value}  {value:#018x}")


def test_missing_and_empty_files_exit_2(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, str(tmp_path / "absent.img"), "map")
    assert code == 2 and "cannot open" in err
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    code, _, err = run(capsys, str(empty), "map")
    assert code == 2 and "is empty" in err


def test_read_only_by_default_and_write_needs_writable(
        ram_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = ram_file.read_bytes()
    code, _, err = run(capsys, str(ram_file), "write", "0x10", "4a")
    assert code == 2 and "is opened read-only (the default); pass --writable" in err
    assert ram_file.read_bytes() == before
    with open_ram_file(str(ram_file)) as ram:
        assert all(region.read_only for region in ram.memory.regions())
        with pytest.raises(ReadOnlyRegion):
            ram.memory.write_slice(GuestAddress(0x10), b"J")  # refused before any pwrite
    code, out, _ = run(capsys, str(ram_file), "write", "0x10", "4a 45", "--writable")
    assert (code, out.strip()) == (0, "wrote 2 byte(s) at 0x10")
    assert ram_file.read_bytes()[0x10:0x20] == b"JEllo, RAM file!"


def test_parsers() -> None:
    assert [parse_number(text) for text in ("0x10", "16", "4K", "2m", "1_000", "0o17")] == \
        [16, 16, 4096, 2 << 20, 1000, 15]
    with pytest.raises(InspectError, match=r"is not in \[0, 2\*\*64\)"):
        parse_number("-1")
    entries = parse_layout(" 0:1M , 0x100000 : 4K @ 8K")
    assert [(entry.start, entry.size, entry.offset) for entry in entries] == \
        [(0, 1 << 20, 0), (0x100000, 4096, 8192)]


def test_command_line_in_a_subprocess(ram_file: Path) -> None:
    result = run_python("-m", "vm_memory_tools", "inspect", str(ram_file), "read", "u64", "0x100")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == on_this_host(
        "0x100  u64  1234605616436508552  0x1122334455667788", ram_file)
    usage = run_python("-m", "vm_memory_tools", "inspect", str(ram_file))
    assert usage.returncode == 2 and "required" in usage.stderr


QEMU: Final = shutil.which("qemu-system-x86_64")
FIRMWARE_DEADLINE_SECONDS: Final = 120.0
"""How long the firmware may take to leave its tables, under TCG on a loaded machine."""


def test_real_qemu_ram_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """QEMU boots its firmware into a memory-backend-file; the ACPI RSDP the firmware
    leaves in the F segment (below 1 MiB) is found and read through the inspector."""
    if QEMU is None:
        unavailable("qemu-system-x86_64 is not installed (Debian: qemu-system-x86)")
    ram = tmp_path / "guest-ram"
    size = 64 << 20
    process = subprocess.Popen(
        ["nice", "-n", "10", QEMU, "-machine", "pc,accel=tcg,memory-backend=ram", "-m", "64M",
         "-object", f"memory-backend-file,id=ram,size={size},mem-path={ram},share=on",
         "-display", "none", "-serial", "none", "-monitor", "none", "-nodefaults",
         "-no-reboot"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + FIRMWARE_DEADLINE_SECONDS
        rsdp: list[int] = []
        while not rsdp:  # the firmware runs, then (no disk) waits for a boot device
            assert process.poll() is None, process.communicate()[1].decode()
            assert time.monotonic() < deadline, "no RSDP in the guest's RAM file yet"
            time.sleep(0.5)
            if not ram.exists() or ram.stat().st_size != size:
                continue
            code, out, _ = run(capsys, str(ram), "search", "--text", "RSD PTR ")
            assert code in (0, 1), out
            rsdp = [address for address in (int(line.split()[0], 16)
                                             for line in out.splitlines()
                                             if line.startswith("0x"))
                    if 0xE0000 <= address < 0x100000]
        code, out, _ = run(capsys, str(ram), "hexdump", hex(rsdp[0]), "8")
        assert code == 0 and "|RSD PTR |" in out
    finally:
        process.kill()
        process.wait()
    assert not os.path.exists(ram) or ram.stat().st_size == size
