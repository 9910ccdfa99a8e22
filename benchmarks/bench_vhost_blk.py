"""Our vhost-user-blk back-end against qemu-storage-daemon, measured by a real Linux guest.

    python -m benchmarks.bench_vhost_blk [--quick] [--rounds N]

In each of N rounds (default 5), for 1 and 2 queues, one guest boot (QEMU TCG, 2 vCPUs)
per back-end, ours and qemu-storage-daemon back to back in an order that alternates
between rounds, on a 256 MiB image: with 1 queue, 1 MiB sequential O_DIRECT writes and
reads (`dd bs=1M`); with each queue count, 4 KiB O_DIRECT reads at queue depth 1 per
vCPU used (one reader per queue, each pinned to its own vCPU). A loaded host makes a
single run meaningless (one TCG guest's speed swings by 2x), so the table gives each
figure's median over the rounds with its spread, and the ratio is the median of the
per-round ratios (ours and theirs measured minutes apart at most). The guest times each
workload (/proc/uptime) and counts its requests (/sys/block/vda/stat); the host samples
the back-end's CPU time (/proc/PID/stat) at the guest's start and end markers. The
targets are the issue's (≥ 0.8 for 1 MiB throughput, ≥ 0.5 for 4 KiB IOPS).

A second run of our back-end with each queue thread under cProfile splits its CPU time
into the library's accesses (`vm_memory`), the queue and protocol code
(`vm_memory_virtio`, `vm_memory_vhost`), and the I/O system calls (`preadv`/`pwritev`,
`fdatasync`, eventfd reads and writes); the table gives the shares of the profiled time.

The 4 KiB reads are at random 4 KiB offsets over the whole image (`random_read.c`, built
static with gcc, one reader per vCPU); the image sits in the host's page cache for both
back-ends (the guest reads it all first).
"""

from __future__ import annotations

import os
import pstats
import statistics
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
    """The 1 MiB workloads with one queue only; the 4 KiB reads with each queue count."""
    big = 64 if quick else 192
    small = 2000 if quick else 8000
    dd = "dd 2>/dev/null"
    sequential = [
        Workload("1 MiB sequential O_DIRECT writes",
                 [f"{dd} if=/dev/zero of=/dev/vda bs=1M count={big} oflag=direct"], big),
        Workload("1 MiB sequential O_DIRECT reads",
                 [f"{dd} if=/dev/vda of=/dev/null bs=1M count={big} iflag=direct"], big),
    ]
    return (sequential if queues == 1 else []) + [
        Workload(f"4 KiB random O_DIRECT reads, {queues} queue{'s' if queues > 1 else ''}",
                 [f"taskset {1 << cpu} /bin/random_read /dev/vda {small} "
                  f"{IMAGE_MIB * 256} {cpu + 1}" for cpu in range(queues)],
                 queues * small * 4096 / 2**20),
    ]


def random_reader(work: Path) -> bytes:
    """The guest's random-offset reader (`random_read.c`), built static once."""
    binary = work / "random_read"
    if not binary.exists():
        subprocess.run(["gcc", "-static", "-O2", "-o", str(binary),
                        str(Path(__file__).with_name("random_read.c"))], check=True)
    return binary.read_bytes()


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
    build_initramfs(parts, init_script(guest_body(loads), ["vda"]),
                    {"/bin/random_read": random_reader(work)}, initrd)
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


@dataclass
class Series:
    """One workload's figures over the rounds, per back-end."""

    name: str
    unit: str
    target: float
    rates: dict[str, list[float]]
    cpu_per_request: dict[str, list[float]]
    ratios: list[float]  # ours / theirs, per round (both measured back to back)


def spread(values: list[float]) -> str:
    return f"{min(values):,.2f}..{max(values):,.2f}" if values[0] < 10 else \
        f"{min(values):,.0f}..{max(values):,.0f}"


def measure(rounds: int, quick: bool, work: Path) -> list[Series]:
    """`rounds` rounds; in each, for 1 and 2 queues, ours and qemu-storage-daemon back to
    back, the order alternating between rounds (so a load change on the host falls on
    both, and neither always runs first)."""
    series: dict[str, Series] = {}
    for number in range(rounds):
        for queues in (1, 2):
            order = ("ours", "qsd") if (number + queues) % 2 == 0 else ("qsd", "ours")
            results = {backend: run(backend, queues, quick, work) for backend in order}
            for index, load in enumerate(workloads(queues, quick)):
                is_iops = load.name.startswith("4 KiB")
                entry = series.setdefault(load.name, Series(
                    load.name, "IOPS" if is_iops else "MiB/s", 0.5 if is_iops else 0.8,
                    {"ours": [], "qsd": []}, {"ours": [], "qsd": []}, []))
                rate: dict[str, float] = {}
                for backend in order:
                    got = results[backend][index]
                    rate[backend] = (got.requests if is_iops else load.megabytes) / got.seconds
                    entry.rates[backend].append(rate[backend])
                    entry.cpu_per_request[backend].append(got.cpu / max(got.requests, 1))
                entry.ratios.append(rate["ours"] / rate["qsd"])
            print(f"round {number + 1}/{rounds}, {queues} queue(s): " + ", ".join(
                f"{name}: {entry.ratios[-1]:.2f}" for name, entry in series.items()
                if len(entry.ratios) == number + 1 and
                entry.name in {load.name for load in workloads(queues, quick)}),
                file=sys.stderr, flush=True)
    return list(series.values())


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    rounds = int(argv[argv.index("--rounds") + 1]) if "--rounds" in argv else \
        (3 if quick else 5)
    try:
        guest_parts()
        storage_daemon("x", "y")
    except GuestUnavailable as error:
        print(f"not measured: {error}")
        return 0
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        table = measure(rounds, quick, work)
        profile = str(work / "profile")
        run("ours", 2, quick, work, profile=profile)
        shares = categorize(profile)
    print(f"{rounds} rounds, medians (spread min..max); ratio = ours / qemu-storage-daemon "
          f"per round, both measured back to back")
    print()
    print("| workload (guest-measured) | ours | qemu-storage-daemon | ratio: median "
          "(spread) | target | within target | back-end CPU per request: ours | theirs |")
    print("|---|---:|---:|---:|---|---|---:|---:|")
    for entry in table:
        ours, theirs = entry.rates["ours"], entry.rates["qsd"]
        ratio = statistics.median(entry.ratios)
        cpu_ours = [value * 1e6 for value in entry.cpu_per_request["ours"]]
        cpu_theirs = [value * 1e6 for value in entry.cpu_per_request["qsd"]]
        print(f"| {entry.name} | {statistics.median(ours):,.0f} {entry.unit} "
              f"({spread(ours)}) | {statistics.median(theirs):,.0f} {entry.unit} "
              f"({spread(theirs)}) | {ratio:.2f} ({spread(entry.ratios)}) "
              f"| ≥ {entry.target:g} | {'yes' if ratio >= entry.target else 'no'} "
              f"| {statistics.median(cpu_ours):,.0f} µs ({spread(cpu_ours)}) "
              f"| {statistics.median(cpu_theirs):,.0f} µs ({spread(cpu_theirs)}) |")
    print()
    print("Where our back-end's queue threads spend their CPU time (cProfile, 2 queues, "
          "one extra run; shares of the profiled time):")
    for name, share in shares.items():
        print(f"- {name}: {share:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
