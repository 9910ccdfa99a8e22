"""Live-migration-style pre-copy: copy guest memory while a writer keeps dirtying it.

The source memory tracks dirty pages (`track_dirty_pages`). A writer thread plays a
running guest, writing through the library to a hot set of pages and, now and then,
anywhere. The migration loop copies everything once, then repeatedly takes the pages
dirtied since the last round (`take_dirty_pages`, which clears exactly what it returns,
so a page written during the take is never lost) and copies only those. When a round
is small enough, it stops the writer and copies the last dirty pages (stop-and-copy).
The destination must then equal the source byte for byte.

Run: python examples/dirty_tracking_loop.py
"""

from __future__ import annotations

import random
import threading
import time

from vm_memory import GuestAddress, GuestMemoryMmap

PAGE = 4096
REGIONS = [(GuestAddress(0), 4 << 20), (GuestAddress(0x100_0000), 4 << 20)]  # 2048 pages
HOT_PAGES = 64
MAX_ROUNDS = 8
CONVERGED_PAGES = 2 * HOT_PAGES  # small enough to copy with the guest paused


def copy_pages(source: GuestMemoryMmap, destination: GuestMemoryMmap,
               pages: list[GuestAddress]) -> None:
    for page in pages:
        destination.write_slice(page, source.read_bytes(page, PAGE))


def all_pages(memory: GuestMemoryMmap) -> list[GuestAddress]:
    return [region.start + offset for region in memory.regions()
            for offset in range(0, region.length, PAGE)]


class Writer(threading.Thread):
    """A busy guest: mostly a small hot set, sometimes a random page anywhere."""

    def __init__(self, memory: GuestMemoryMmap, seed: int) -> None:
        super().__init__(name="guest-writer", daemon=True)
        self.memory = memory
        self.random = random.Random(seed)
        self.pages = all_pages(memory)
        self.hot = self.random.sample(self.pages, HOT_PAGES)
        self.stop = threading.Event()
        self.writes = 0

    def run(self) -> None:
        while not self.stop.is_set():
            page = self.random.choice(self.hot if self.random.random() < 0.98 else self.pages)
            offset = self.random.randrange(0, PAGE - 8)
            self.memory.write_slice(page + offset, self.random.randbytes(8))
            self.writes += 1
            if self.writes % 256 == 0:
                time.sleep(0.0005)  # a guest that also computes, not only writes


def main() -> None:
    source = GuestMemoryMmap.from_ranges(REGIONS)
    destination = GuestMemoryMmap.from_ranges(REGIONS)
    one_pass = GuestMemoryMmap.from_ranges(REGIONS)  # what a copy without dirty log gets
    source.track_dirty_pages(PAGE)
    writer = Writer(source, seed=2026)
    writer.start()

    source.take_dirty_pages()  # round 0 copies everything: start the log from here
    copy_pages(source, destination, writer.pages)
    copy_pages(source, one_pass, writer.pages)
    print(f"round 0: copied all {len(writer.pages)} pages")
    for round_number in range(1, MAX_ROUNDS + 1):
        time.sleep(0.02)  # the guest runs on between rounds
        dirty = source.take_dirty_pages()
        copy_pages(source, destination, dirty)
        print(f"round {round_number}: {len(dirty)} dirty pages copied")
        if len(dirty) <= CONVERGED_PAGES:
            break

    writer.stop.set()  # pause the guest
    writer.join()
    last = source.take_dirty_pages()
    copy_pages(source, destination, last)
    print(f"stop-and-copy: writer paused after {writer.writes:,} writes; "
          f"{len(last)} last dirty pages copied")

    stale = [page for page in writer.pages
             if source.read_bytes(page, PAGE) != one_pass.read_bytes(page, PAGE)]
    print(f"a single copy without the dirty log would have left {len(stale)} stale pages")
    for start, size in REGIONS:
        if source.read_bytes(start, size) != destination.read_bytes(start, size):
            raise SystemExit(f"destination differs from the source in region {start}")
    print(f"verified: destination equals source ({len(writer.pages)} pages)")


if __name__ == "__main__":
    main()
