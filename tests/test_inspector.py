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
from host_assumptions import needs_8_byte_atomics

from vm_memory import GuestAddress, ReadOnlyRegion
from vm_memory_tools.cli import main
from vm_memory_tools.inspector import InspectError, open_ram_file, parse_layout, parse_number

PAGE: Final = 0x1000
REPO_ROOT: Final = Path(__file__).resolve().parents[1]
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


def on_this_host(line: str, ram_file: Path) -> str:
    """A `read` line written for a little-endian host, as this host prints it: u16..i64
    are read in the host's byte order (le/be types name theirs). Default layout only."""
    address, type_name, _, _ = line.split()
    if sys.byteorder == "little" or type_name[0] not in "ui" or type_name in ("u8", "i8"):
        return line
    size, start = int(type_name[1:]) // 8, int(address, 16)
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
        f"{ram_file}: 12,288 bytes, mapped read-only",
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
        "0:4K@0x800": "the file offset must be a multiple of the page size",
        "0x1000": "layout entry '0x1000' is not START:SIZE[@OFFSET]",
        "0:0": "has size 0",
        "0:zz": "region size 'zz' is not a number",
    }
    for layout, message in expectations.items():
        code, out, err = run(capsys, file, "--layout", layout, "map")
        assert (code, out) == (2, ""), layout
        assert message in err, (layout, err)


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
    assert code == 2 and "is mapped read-only (the default); pass --writable" in err
    assert ram_file.read_bytes() == before
    memory, _ = open_ram_file(str(ram_file), None)
    assert all(region.read_only for region in memory.regions())
    with pytest.raises(ReadOnlyRegion):
        memory.write_slice(GuestAddress(0x10), b"J")  # refused before touching the mapping
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
    result = subprocess.run(
        [sys.executable, "-m", "vm_memory_tools", "inspect", str(ram_file), "read", "u64", "0x100"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == on_this_host(
        "0x100  u64  1234605616436508552  0x1122334455667788", ram_file)
    usage = subprocess.run([sys.executable, "-m", "vm_memory_tools", "inspect", str(ram_file)],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                           check=False)
    assert usage.returncode == 2 and "required" in usage.stderr


QEMU: Final = shutil.which("qemu-system-x86_64")
QEMU_RUN_SECONDS: Final = 3.0


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_real_qemu_ram_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """QEMU boots its firmware into a memory-backend-file; the ACPI RSDP the firmware
    leaves in the F segment (below 1 MiB) is found and read through the inspector."""
    assert QEMU is not None
    ram = tmp_path / "guest-ram"
    size = 64 << 20
    process = subprocess.Popen(
        [QEMU, "-machine", "pc,accel=tcg,memory-backend=ram", "-m", "64M",
         "-object", f"memory-backend-file,id=ram,size={size},mem-path={ram},share=on",
         "-display", "none", "-serial", "none", "-monitor", "none", "-nodefaults",
         "-no-reboot"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(QEMU_RUN_SECONDS)  # firmware runs; no disk, so it then waits for boot
        assert process.poll() is None, process.communicate()[1].decode()
        assert ram.stat().st_size == size
        code, out, _ = run(capsys, str(ram), "search", "--text", "RSD PTR ")
        assert code == 0, out
        addresses = [int(line.split()[0], 16) for line in out.splitlines()
                     if line.startswith("0x")]
        rsdp = [address for address in addresses if 0xE0000 <= address < 0x100000]
        assert rsdp, out
        code, out, _ = run(capsys, str(ram), "hexdump", hex(rsdp[0]), "8")
        assert code == 0 and "|RSD PTR |" in out
    finally:
        process.kill()
        process.wait()
    assert not os.path.exists(ram) or ram.stat().st_size == size
