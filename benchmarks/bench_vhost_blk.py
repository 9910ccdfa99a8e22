"""Our vhost-user-blk back-end against qemu-storage-daemon, measured by a real Linux guest.

    python -m benchmarks.bench_vhost_blk [--quick]

For each back-end and for 1 and 2 queues, one guest boot (QEMU TCG, 2 vCPUs) runs, on
a 256 MiB image: 1 MiB sequential O_DIRECT writes and reads (`dd bs=1M`), then 4 KiB
O_DIRECT reads at queue depth 1 per vCPU used (one reader per queue, each pinned to its
own vCPU). The guest times each workload (/proc/uptime) and counts its requests
(/sys/block/vda/stat); the host samples the back-end's CPU time (/proc/PID/stat) at the
guest's start and end markers. Ratios are ours / qemu-storage-daemon's, measured in the
same run; the targets are the issue's (≥ 0.8 for 1 MiB throughput, ≥ 0.5 for 4 KiB IOPS).

A second run of our back-end with each queue thread under cProfile splits its CPU time
into the library's accesses (`vm_memory`), the queue and protocol code
(`vm_memory_virtio`, `vm_memory_vhost`), and the I/O system calls (`preadv`/`pwritev`,
`fdatasync`, eventfd reads and writes); the table gives the shares of the profiled time.

The 4 KiB reads are at sequential offsets: busybox has no random-offset reader and the
image sits in the host's page cache, where the offset pattern costs a back-end nothing.
"""

from __future__ import annotations

import os
import pstats
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vm_memory_tools.linux_guest import (
    Disk,
    GuestUnavailable,
    build_initramfs,
    guest_parts,
    init_script,
    start_guest,
    storage_daemon,
    wait_for_socket,
)

IMAGE_MIB = 256
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Workload:
    name: str
    commands: list[str]  # run in parallel, each pinned to a vCPU
    megabytes: float


def workloads(queues: int, quick: bool) -> list[Workload]:
    big = 64 if quick else 192
    small = 2000 if quick else 8000
    dd = "dd 2>/dev/null"
    return [
        Workload("1 MiB sequential O_DIRECT writes",
                 [f"{dd} if=/dev/zero of=/dev/vda bs=1M count={big} oflag=direct"], big),
        Workload("1 MiB sequential O_DIRECT reads",
                 [f"{dd} if=/dev/vda of=/dev/null bs=1M count={big} iflag=direct"], big),
        Workload(f"4 KiB O_DIRECT reads, {queues} queue{'s' if queues > 1 else ''}",
                 [f"taskset {1 << cpu} {dd} if=/dev/vda of=/dev/null bs=4k count={small} "
                  f"skip={cpu * small} iflag=direct" for cpu in range(queues)],
                 queues * small * 4096 / 2**20),
    ]


def guest_body(loads: list[Workload]) -> str:
    lines = ["cat /dev/vda > /dev/null  # warm the host's page cache for both back-ends"]
    for number, load in enumerate(loads):
        lines.append("S0=$(cat /sys/block/vda/stat); T0=$(cut -d' ' -f1 /proc/uptime)")
        lines.append(f"echo BENCH-START {number}")
        lines += [f"{command} &" for command in load.commands]
        lines.append("wait")
        lines.append(f"T1=$(cut -d' ' -f1 /proc/uptime); echo BENCH-END {number}")
        lines.append(f"echo RESULT w{number} $T0 $T1 $S0 $(cat /sys/block/vda/stat)")
    return "\n".join(lines) + "\n"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Measured:
    seconds: float
    requests: int
    cpu: float


def run(backend: str, queues: int, quick: bool, work: Path,
        profile: str | None = None) -> list[Measured]:
    parts = guest_parts()
    loads = workloads(queues, quick)
    image = work / f"{backend}-{queues}.img"
    with open(image, "wb") as stream:
        stream.truncate(IMAGE_MIB << 20)
    sock = str(work / f"{backend}-{queues}.sock")
    environment = dict(os.environ)
    if profile:
        environment["VM_MEMORY_VHOST_PROFILE"] = profile
    if backend == "ours":
        command = [sys.executable, "-m", "vm_memory_tools", "vhost-user-blk", "--socket",
                   sock, "--image", str(image), "--queues", str(queues)]
    else:
        command = storage_daemon(str(image), sock, queues=queues)
    server = subprocess.Popen(command, env=environment, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    initrd = work / f"{backend}-{queues}.initrd.gz"
    build_initramfs(parts, init_script(guest_body(loads), ["vda"]), {}, initrd)
    console = work / f"{backend}-{queues}.console"
    try:
        wait_for_socket(sock, 60, server)
        guest = start_guest(parts, initrd, [Disk(sock, queues)], console)
        cpu: dict[str, float] = {}
        while guest.poll() is None:
            text = console.read_text(errors="replace")
            for number in range(len(loads)):
                for mark in (f"BENCH-START {number}", f"BENCH-END {number}"):
                    if mark in text and mark not in cpu:
                        cpu[mark] = cpu_seconds(server.pid)
            time.sleep(0.01)
        guest.wait()
    finally:
        server.terminate()
        server.wait(60)
    text = console.read_text(errors="replace")
    measured: list[Measured] = []
    for number in range(len(loads)):
        line = next(line[line.find("RESULT"):] for line in text.splitlines()
                    if f"RESULT w{number} " in line)
        values = line.split()[2:]
        start, end = float(values[0]), float(values[1])
        before, after = [int(v) for v in values[2:19]], [int(v) for v in values[19:36]]
        requests = (after[0] - before[0]) + (after[4] - before[4])
        used = cpu[f"BENCH-END {number}"] - cpu[f"BENCH-START {number}"]
        measured.append(Measured(end - start, requests, used))
    return measured


CATEGORIES = ("library (vm_memory)", "queues and protocol (vm_memory_virtio, "
              "vm_memory_vhost)", "I/O system calls", "other")


def categorize(profile_prefix: str) -> dict[str, float]:
    directory, prefix = os.path.split(profile_prefix)
    stats: pstats.Stats | None = None
    for name in os.listdir(directory):
        if name.startswith(prefix + "."):
            path = os.path.join(directory, name)
            stats = pstats.Stats(path) if stats is None else stats.add(path) or stats
    shares: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
    if stats is None:
        return shares
    table: dict[tuple[str, int, str], tuple[Any, ...]] = getattr(stats, "stats")  # noqa: B009
    for (filename, _, function), row in table.items():
        own = float(row[2])
        if "/vm_memory/" in filename or "_ctypes" in function or "CFuncPtr" in function:
            shares[CATEGORIES[0]] += own
        elif "vm_memory_virtio" in filename or "vm_memory_vhost" in filename:
            shares[CATEGORIES[1]] += own
        elif any(call in function for call in ("preadv", "pwritev", "fdatasync",
                                               "posix.read", "posix.write",
                                               "eventfd_write")):
            shares[CATEGORIES[2]] += own
        else:
            shares[CATEGORIES[3]] += own
    total = sum(shares.values()) or 1.0
    return {name: value / total for name, value in shares.items()}


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    try:
        guest_parts()
        storage_daemon("x", "y")
    except GuestUnavailable as error:
        print(f"not measured: {error}")
        return 0
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        for queues in (1, 2):
            ours = run("ours", queues, quick, work)
            theirs = run("qsd", queues, quick, work)
            for load, mine, reference in zip(workloads(queues, quick), ours, theirs,
                                             strict=True):
                if load.name.startswith("4 KiB") or queues == 1:
                    is_iops = load.name.startswith("4 KiB")
                    ours_rate = (mine.requests if is_iops else load.megabytes) / mine.seconds
                    their_rate = (reference.requests if is_iops else load.megabytes) / \
                        reference.seconds
                    unit = "IOPS" if is_iops else "MiB/s"
                    target = 0.5 if is_iops else 0.8
                    ratio = ours_rate / their_rate
                    rows.append(
                        f"| {load.name} | {ours_rate:,.0f} {unit} | {their_rate:,.0f} {unit} "
                        f"| {ratio:.2f} | ≥ {target:g} | {'yes' if ratio >= target else 'no'} "
                        f"| {mine.cpu / max(mine.requests, 1) * 1e6:,.0f} µs | "
                        f"{reference.cpu / max(reference.requests, 1) * 1e6:,.0f} µs |")
        profile = str(work / "profile")
        run("ours", 2, quick, work, profile=profile)
        shares = categorize(profile)
    print("| workload (guest-measured) | ours | qemu-storage-daemon | ratio | target | "
          "within target | back-end CPU per request, ours | theirs |")
    print("|---|---:|---:|---:|---|---|---:|---:|")
    print("\n".join(rows))
    print()
    print("Where our back-end's queue threads spend their CPU time (cProfile, 2 queues):")
    for name, share in shares.items():
        print(f"- {name}: {share:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
