"""The guest's workload for the real-QEMU tests, and the model that predicts its results.

The test writes the init script from a plan of writes; the same plan applied to a
`bytearray` predicts every checksum the guest prints and every byte of the image after
shutdown. Data comes from files in the initramfs (`/data/big`, `/data/small`), made
here from a seeded generator, so both sides know them.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Final

from support import unavailable

from vm_memory_tools.linux_guest import GuestParts, GuestUnavailable, guest_parts, require_qemu

DISK_BYTES: Final = 32 << 20
RO_DISK_BYTES: Final = 4 << 20
BIG: Final = 4 << 20
SMALL_BLOCKS: Final = 64
BLOCK: Final = 4096


def need_guest(*, storage_daemon: bool = False) -> GuestParts:
    """The guest parts and QEMU, or skip (off CI) / fail (CI=true) saying what is missing."""
    try:
        require_qemu(storage_daemon=storage_daemon)
        return guest_parts()
    except GuestUnavailable as error:
        unavailable(str(error))


def pattern(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Plan:
    """Writes the guest makes (offset, data source, source offset, length) and the
    checksums it prints, with the model that predicts them."""

    image: bytearray
    big: bytes = field(default_factory=lambda: pattern(1, BIG))
    small: bytes = field(default_factory=lambda: pattern(2, SMALL_BLOCKS * BLOCK))
    expected: dict[str, str] = field(default_factory=dict[str, str])
    lines: list[str] = field(default_factory=list[str])

    def files(self) -> dict[str, bytes]:
        return {"/data/big": self.big, "/data/small": self.small}

    def write(self, offset: int, source: str, source_offset: int, length: int) -> None:
        data = self.big if source == "big" else self.small
        self.image[offset:offset + length] = data[source_offset:source_offset + length]

    def md5(self, offset: int, length: int) -> str:
        return hashlib.md5(self.image[offset:offset + length]).hexdigest()


def correctness_plan(initial: bytes, read_only_image: bytes) -> Plan:
    """Large O_DIRECT writes, scattered 4 KiB writes, concurrent writers on both vCPUs,
    write + fsync, whole-disk reads from both vCPUs, the read-only disk."""
    plan = Plan(bytearray(initial))
    add = plan.lines.append
    dd = "dd 2>/dev/null"
    add("export D=/dev/vda")
    # 1. Large requests: 4 MiB in 1 MiB O_DIRECT writes at 8 MiB, read back the same way.
    add(f"{dd} if=/data/big of=$D bs=1M seek=8 oflag=direct conv=notrunc "
        "|| echo GUEST-ERROR big")
    plan.write(8 << 20, "big", 0, BIG)
    add(f"echo RESULT big $({dd} if=$D bs=1M skip=8 count=4 iflag=direct | md5sum)")
    plan.expected["big"] = plan.md5(8 << 20, BIG)
    # 2. Scattered 4 KiB writes.
    chooser = random.Random(3)
    blocks = chooser.sample(range(DISK_BYTES // BLOCK), 24)
    for index, block in enumerate(blocks):
        add(f"{dd} if=/data/small of=$D bs=4k skip={index} seek={block} count=1 oflag=direct "
            "conv=notrunc || echo GUEST-ERROR scattered")
        plan.write(block * BLOCK, "small", index * BLOCK, BLOCK)
    reads = " ".join(str(block) for block in blocks)
    add(f"echo RESULT scattered $(for b in {reads}; do {dd} if=$D bs=4k skip=$b count=1 "
        "iflag=direct; done | md5sum)")
    plan.expected["scattered"] = hashlib.md5(b"".join(
        plan.image[block * BLOCK:(block + 1) * BLOCK] for block in blocks)).hexdigest()
    # 3. Four concurrent writers, two pinned on each vCPU (so both queues carry them).
    for writer in range(4):
        add(f"taskset {1 << (writer % 2)} {dd} if=/data/big of=$D bs=64k skip={writer * 16} "
            f"count=16 seek={256 + writer * 16} oflag=direct conv=notrunc "
            "|| echo GUEST-ERROR concurrent &")
        plan.write((256 + writer * 16) * 65536, "big", writer * 16 * 65536, 16 * 65536)
    add("wait")
    add(f"echo RESULT concurrent $({dd} if=$D bs=64k skip=256 count=64 iflag=direct | md5sum)")
    plan.expected["concurrent"] = plan.md5(256 * 65536, 64 * 65536)
    # 4. A buffered write made durable with fsync (a FLUSH request).
    add(f"{dd} if=/data/small of=$D bs=64k seek=100 count=2 conv=fsync,notrunc "
        "|| echo GUEST-ERROR fsync")
    plan.write(100 * 65536, "small", 0, 2 * 65536)
    add(f"echo RESULT fsync $({dd} if=$D bs=64k skip=100 count=2 iflag=direct | md5sum)")
    plan.expected["fsync"] = plan.md5(100 * 65536, 2 * 65536)
    # 5. Both halves of the disk read at once, one reader per vCPU; then all of it.
    half = DISK_BYTES // 2 // (1 << 20)
    for cpu in range(2):
        add(f"taskset {1 << cpu} sh -c '{dd} if=$D bs=1M skip={cpu * half} count={half} "
            f"iflag=direct | md5sum > /tmp/half{cpu}' &")
    add("wait")
    add("echo RESULT half0 $(cat /tmp/half0)")
    add("echo RESULT half1 $(cat /tmp/half1)")
    plan.expected["half0"] = plan.md5(0, DISK_BYTES // 2)
    plan.expected["half1"] = plan.md5(DISK_BYTES // 2, DISK_BYTES // 2)
    add(f"echo RESULT disk $({dd} if=$D bs=1M iflag=direct | md5sum)")
    plan.expected["disk"] = plan.md5(0, DISK_BYTES)
    add("echo RESULT queues $(ls /sys/block/vda/mq | wc -l)")
    plan.expected["queues"] = "2"
    add("echo RESULT stat $(cat /sys/block/vda/stat)")
    # 6. The read-only disk: reported read-only, a write refused, its bytes readable.
    add("echo RESULT ro $(cat /sys/block/vdb/ro)")
    plan.expected["ro"] = "1"
    add(f"{dd} if=/data/small of=/dev/vdb bs=4k count=1 oflag=direct "
        "&& echo RESULT rowrite accepted || echo RESULT rowrite refused")
    plan.expected["rowrite"] = "refused"
    add(f"echo RESULT rodisk $({dd} if=/dev/vdb bs=1M iflag=direct | md5sum)")
    plan.expected["rodisk"] = hashlib.md5(read_only_image).hexdigest()
    return plan


def reconnect_plan(initial: bytes) -> Plan:
    """Four writers on two vCPUs rewriting 4 MiB in 16 KiB O_DIRECT requests,
    twenty passes, with start and end markers for the test that kills the back-end meanwhile."""
    plan = Plan(bytearray(initial))
    add = plan.lines.append
    dd = "dd 2>/dev/null"
    add("export D=/dev/vda")
    add("echo RECONNECT-START")
    for writer in range(4):
        add(f"(for pass in $(seq 20); do taskset {1 << (writer % 2)} {dd} if=/data/big of=$D "
            f"bs=16k skip={writer * 64} count=64 seek={writer * 64} oflag=direct "
            f"conv=notrunc || echo GUEST-ERROR writer{writer}; done) &")
        plan.write(writer * 64 * 16384, "big", writer * 64 * 16384, 64 * 16384)
    add("wait")
    add("echo RECONNECT-WRITES-DONE")
    add(f"echo RESULT written $({dd} if=$D bs=1M count=4 iflag=direct | md5sum)")
    plan.expected["written"] = plan.md5(0, 4 << 20)
    add(f"echo RESULT disk $({dd} if=$D bs=1M iflag=direct | md5sum)")
    plan.expected["disk"] = plan.md5(0, DISK_BYTES)
    return plan


def checksums(found: dict[str, str]) -> dict[str, str]:
    """The guest's results with md5sum's trailing " -" removed."""
    return {name: value.split()[0] if value.endswith(" -") else value
            for name, value in found.items()}
