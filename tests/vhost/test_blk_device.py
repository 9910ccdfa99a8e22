"""The virtio-blk device on real queues in guest memory: every request type and status."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from vm_memory import (
    GuestAddress,
    GuestMemory,
    GuestMemoryAtomic,
    GuestMemoryMmap,
    GuestMemoryRegion,
    GuestRegionMmap,
    MmapRegion,
)
from vm_memory_vhost import BlkDevice, VirtioBlkReqHeader
from vm_memory_vhost.backend import QueueWorker, Vring
from vm_memory_vhost.blk import (
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
)
from vm_memory_virtio import (
    DescriptorChain,
    DriverQueue,
    InvalidChain,
    QueueLayout,
    SplitQueue,
    feature,
)

SECTORS = 64
HEADER = 0x10000
STATUS = 0x10100
DATA = 0x20000
ROM = 0x100000  # a read-only region, above the RAM


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes((i * 7) & 0xFF for i in range(SECTORS * 512)))
    return path


class Rig:
    """A device, its queue, and a driver writing requests into guest memory."""

    def __init__(self, image: Path, *, read_only: bool = False) -> None:
        self.memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x80000)])
        layout = QueueLayout.contiguous(16, GuestAddress(0x1000))
        self.driver = DriverQueue(self.memory, layout)
        self.queue = SplitQueue(self.memory, layout, indirect=True)
        self.device = BlkDevice(str(image), read_only=read_only, serial="disk-serial")
        self.memory.write_slice(GuestAddress(STATUS), b"\xee")

    def header(self, kind: int, sector: int = 0, at: int = HEADER) -> None:
        self.memory.write_slice(GuestAddress(at), bytes(VirtioBlkReqHeader(kind, 0, sector)))

    def run(self, readable: list[tuple[int, int]], writable: list[tuple[int, int]],
            ) -> tuple[int, int]:
        """Submit one chain; (status byte, used length)."""
        self.driver.add(readable, writable)
        chain = self.queue.pop()
        assert chain is not None
        used = self.device.handle(self.memory, chain)
        self.queue.add_used(chain.head, used)
        (_, length), = self.driver.used()
        address = writable[-1][0] + writable[-1][1] - 1
        return self.driver.read_status(address), length


def test_read_write_flush_and_id(image: Path) -> None:
    rig = Rig(image)
    original = image.read_bytes()
    rig.header(VIRTIO_BLK_T_IN, 3)
    assert rig.run([(HEADER, 16)], [(DATA, 512), (DATA + 0x1000, 1024), (STATUS, 1)]) == \
        (VIRTIO_BLK_S_OK, 1537)
    assert rig.memory.read_bytes(GuestAddress(DATA), 512) == original[1536:2048]
    assert rig.memory.read_bytes(GuestAddress(DATA + 0x1000), 1024) == original[2048:3072]
    payload = os.urandom(2048)
    rig.memory.write_slice(GuestAddress(DATA), payload)
    rig.header(VIRTIO_BLK_T_OUT, SECTORS - 4)
    assert rig.run([(HEADER, 16), (DATA, 1000), (DATA + 1000, 1048)], [(STATUS, 1)]) == \
        (VIRTIO_BLK_S_OK, 1)
    rig.header(VIRTIO_BLK_T_FLUSH)
    assert rig.run([(HEADER, 16)], [(STATUS, 1)]) == (VIRTIO_BLK_S_OK, 1)
    assert image.read_bytes() == original[:-2048] + payload
    rig.header(VIRTIO_BLK_T_GET_ID)
    assert rig.run([(HEADER, 16)], [(DATA, 20), (STATUS, 1)]) == (VIRTIO_BLK_S_OK, 21)
    assert rig.memory.read_bytes(GuestAddress(DATA), 20) == b"disk-serial".ljust(20, b"\0")


def test_header_split_across_descriptors_and_unaligned(image: Path) -> None:
    rig = Rig(image)
    raw = bytes(VirtioBlkReqHeader(VIRTIO_BLK_T_IN, 0, 1))
    rig.memory.write_slice(GuestAddress(HEADER + 1), raw[:5])
    rig.memory.write_slice(GuestAddress(HEADER + 0x41), raw[5:])
    assert rig.run([(HEADER + 1, 5), (HEADER + 0x41, 11)], [(DATA, 512), (STATUS, 1)]) == \
        (VIRTIO_BLK_S_OK, 513)
    assert rig.memory.read_bytes(GuestAddress(DATA), 512) == image.read_bytes()[512:1024]


@pytest.mark.parametrize(("case", "readable", "writable", "status"), [
    ("header too short", [(HEADER, 8)], [(STATUS, 1)], VIRTIO_BLK_S_IOERR),
    ("read data device-readable", [(HEADER, 16), (DATA, 512)], [(STATUS, 1)],
     VIRTIO_BLK_S_IOERR),
    ("unsupported type", [(HEADER, 16)], [(STATUS, 1)], VIRTIO_BLK_S_UNSUPP),
    ("read past the end", [(HEADER, 16)], [(DATA, 1024), (STATUS, 1)], VIRTIO_BLK_S_IOERR),
    ("not whole sectors", [(HEADER, 16)], [(DATA, 100), (STATUS, 1)], VIRTIO_BLK_S_IOERR),
])
def test_bad_requests_get_the_status_the_spec_names(
        image: Path, case: str, readable: list[tuple[int, int]],
        writable: list[tuple[int, int]], status: int) -> None:
    rig = Rig(image)
    sector = SECTORS - 1 if case == "read past the end" else 0
    rig.header(99 if case == "unsupported type" else VIRTIO_BLK_T_IN, sector)
    rig.memory.write_slice(GuestAddress(DATA), b"\x55" * 1024)
    assert rig.run(readable, writable)[0] == status
    if writable[0][0] == DATA:  # nothing was read into the guest's buffer
        assert rig.memory.read_bytes(GuestAddress(DATA), 1024) == b"\x55" * 1024


def test_reads_touch_exactly_the_guests_buffers(image: Path) -> None:
    """Guard bytes around every buffer of a scattered IN stay as they were; a request
    with one buffer in read-only guest memory fails (IOERR) having written nothing."""
    fd = os.memfd_create("rom")
    os.ftruncate(fd, 0x1000)
    rom = GuestRegionMmap(MmapRegion.from_file(fd, 0x1000, read_only=True),
                          GuestAddress(ROM))
    os.close(fd)
    rig = Rig(image)
    rig.memory = rig.memory.insert_region(rom)
    rig.queue.set_memory(rig.memory)
    guard = b"\xee" * 0x3000
    rig.memory.write_slice(GuestAddress(DATA), guard)
    buffers = [(DATA + 0x10, 512), (DATA + 0x1000, 1024), (DATA + 0x1400, 512)]
    rig.header(VIRTIO_BLK_T_IN, 2)
    assert rig.run([(HEADER, 16)], [*buffers, (STATUS, 1)]) == (VIRTIO_BLK_S_OK, 2049)
    after = rig.memory.read_bytes(GuestAddress(DATA), 0x3000)
    disk = image.read_bytes()[1024:1024 + 2048]
    assert after[0x10:0x210] + after[0x1000:0x1600] == disk
    assert after[:0x10] + after[0x210:0x1000] + after[0x1600:] == \
        guard[:0x10] + guard[0x210:0x1000] + guard[0x1600:]
    rig.memory.write_slice(GuestAddress(DATA), guard)
    rig.header(VIRTIO_BLK_T_IN, 0)
    assert rig.run([(HEADER, 16)], [(DATA, 512), (ROM, 512), (STATUS, 1)])[0] == \
        VIRTIO_BLK_S_IOERR
    assert rig.memory.read_bytes(GuestAddress(DATA), 0x3000) == guard
    # The status byte itself in read-only memory: the chain is refused before any I/O.
    rig.header(VIRTIO_BLK_T_IN, 0)
    rig.driver.add([(HEADER, 16)], [(DATA, 512), (ROM, 1)])
    chain = rig.queue.pop()
    assert chain is not None
    with pytest.raises(InvalidChain, match="status byte cannot be written"):
        rig.device.handle(rig.memory, chain)
    assert rig.memory.read_bytes(GuestAddress(DATA), 0x3000) == guard


def test_write_with_data_device_writable_is_refused(image: Path) -> None:
    rig = Rig(image)
    before = image.read_bytes()
    rig.header(VIRTIO_BLK_T_OUT, 0)
    assert rig.run([(HEADER, 16)], [(DATA, 512), (STATUS, 1)])[0] == VIRTIO_BLK_S_IOERR
    assert image.read_bytes() == before


def test_read_only_disk_is_reported_and_enforced(image: Path) -> None:
    rig = Rig(image, read_only=True)
    assert rig.device.features & feature(VIRTIO_BLK_F_RO)
    assert not BlkDevice(str(image)).features & feature(VIRTIO_BLK_F_RO)  # control
    before = image.read_bytes()
    rig.memory.write_slice(GuestAddress(DATA), b"\xff" * 512)
    rig.header(VIRTIO_BLK_T_OUT, 0)
    assert rig.run([(HEADER, 16), (DATA, 512)], [(STATUS, 1)])[0] == VIRTIO_BLK_S_IOERR
    assert image.read_bytes() == before
    rig.header(VIRTIO_BLK_T_IN, 0)
    assert rig.run([(HEADER, 16)], [(DATA, 512), (STATUS, 1)])[0] == VIRTIO_BLK_S_OK


def test_chain_without_a_status_byte_needs_a_reset(image: Path) -> None:
    rig = Rig(image)
    rig.header(VIRTIO_BLK_T_IN, 0)
    rig.driver.add([(HEADER, 16), (DATA, 512)], [])
    chain = rig.queue.pop()
    assert chain is not None
    with pytest.raises(InvalidChain, match="no device-writable byte"):
        rig.device.handle(rig.memory, chain)


def test_config_space_reports_capacity_and_queues(image: Path) -> None:
    device = BlkDevice(str(image), num_queues=3)
    config = device.config()
    assert int.from_bytes(config[0:8], "little") == SECTORS
    assert int.from_bytes(config[12:16], "little") == 1022  # seg_max
    assert int.from_bytes(config[20:24], "little") == 512  # blk_size
    assert int.from_bytes(config[34:36], "little") == 3  # num_queues


@pytest.mark.parametrize("change", ["add", "remove"])
def test_a_busy_queue_follows_hot_plug_from_its_next_chain(image: Path, change: str) -> None:
    """The worker loop on a queue its guest keeps busy: memory added while a chain is
    served is usable by the next chain, memory removed is refused to it (InvalidChain:
    the queue needs a reset) and never written after the removal."""
    rig = Rig(image)
    hot = 0x200000
    second_header, second_status = 0x11000, 0x11100
    atomic = GuestMemoryAtomic(rig.memory)
    if change == "remove":
        atomic.insert_region(GuestRegionMmap(MmapRegion.anonymous(0x10000), GuestAddress(hot)))
    removed: list[GuestMemoryRegion] = []
    handled: list[int] = []

    def handle(memory: GuestMemory, chain: DescriptorChain) -> int:
        handled.append(chain.head)
        if len(handled) == 1:  # the control thread's change lands mid-request
            if change == "add":
                atomic.insert_region(GuestRegionMmap(MmapRegion.anonymous(0x10000),
                                                     GuestAddress(hot)))
            else:
                removed.append(atomic.remove_region(GuestAddress(hot), 0x10000))
            rig.driver.memory = atomic.memory()
            rig.header(VIRTIO_BLK_T_IN, 0, at=second_header)
            rig.driver.add([(second_header, 16)], [(hot, 512), (second_status, 1)])
        return rig.device.handle(memory, chain)

    backend = SimpleNamespace(table=SimpleNamespace(memory=atomic.memory),
                              device=SimpleNamespace(handle=handle))
    worker = QueueWorker(cast(Any, backend), Vring(0), rig.queue, None, [])
    rig.header(VIRTIO_BLK_T_IN, 0)
    rig.driver.add([(HEADER, 16)], [(DATA, 512), (STATUS, 1)])
    if change == "add":
        worker._serve_available()  # pyright: ignore[reportPrivateUsage]
        assert len(handled) == 2
        assert atomic.memory().read_bytes(GuestAddress(hot), 512) == image.read_bytes()[:512]
        assert rig.driver.read_status(second_status) == VIRTIO_BLK_S_OK
    else:
        with pytest.raises(InvalidChain, match="not in guest memory"):
            worker._serve_available()  # pyright: ignore[reportPrivateUsage]
        assert len(handled) == 1
        untouched = bytearray(512)
        removed[0].read_into(0, memoryview(untouched))
        assert untouched == bytes(512)
