"""A real Linux guest's virtio-blk driver through QEMU's vhost-user-blk-pci, on our
back-end and on qemu-storage-daemon in the same run; and our back-end killed with
SIGKILL mid-I/O, restarted, the guest's I/O resumed without losing or repeating a byte.

QEMU runs TCG (this host's KVM cannot boot Linux) at low priority; timeouts are
generous and nothing is timed. Off CI, missing QEMU or Debian's archive skips with the
reason; with CI=true it fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from vm_memory_tools.linux_guest import (
    CONSOLE_END,
    Disk,
    build_initramfs,
    init_script,
    nice,
    results,
    start_guest,
    storage_daemon,
    wait_for_line,
    wait_for_socket,
    wait_guest,
)
from vm_memory_vhost.inflight import InflightArea, queue_area_size

from .backend_process import BackendProcess, start_backend
from .guest_plan import (
    DISK_BYTES,
    RO_DISK_BYTES,
    Plan,
    checksums,
    correctness_plan,
    need_guest,
    pattern,
    reconnect_plan,
)

GUEST_TIMEOUT = 900.0
"""Seconds for one boot and its workload (TCG on a loaded 2-CPU machine is slow)."""


def run_guest(tmp_path: Path, name: str, plan: Plan, disks: list[Disk],
              backends: tuple[BackendProcess, ...] = ()) -> dict[str, str]:
    """Boot with `plan` as init; its results. Gives up early if a back-end of ours
    stopped a queue (the guest would wait for it until the timeout)."""
    parts = need_guest()
    initrd = tmp_path / f"{name}.initrd.gz"
    build_initramfs(parts, init_script("\n".join(plan.lines) + "\n",
                                       ["vda", "vdb"][:len(disks)]), plan.files(), initrd)
    console = tmp_path / f"{name}.console"
    guest = start_guest(parts, initrd, disks, console)
    deadline = time.monotonic() + GUEST_TIMEOUT
    while guest.poll() is None and time.monotonic() < deadline:
        if any("needs a reset" in backend.log_text() or "cannot start" in backend.log_text()
               for backend in backends):
            break
        time.sleep(0.5)
    output = wait_guest(guest, console, 1.0)
    for backend in backends:
        assert "needs a reset" not in backend.log_text(), backend.log_text()
    assert CONSOLE_END in output, output[-3000:]
    assert "GUEST-ERROR" not in output, output[-3000:]
    return checksums(results(output))


def check(found: dict[str, str], plan: Plan, who: str) -> None:
    for name, expected in plan.expected.items():
        assert found.get(name) == expected, f"{who}: {name} is {found.get(name)!r}, " \
                                            f"expected {expected!r}"


def test_linux_guest_on_ours_and_on_qemu_storage_daemon(tmp_path: Path) -> None:
    need_guest(storage_daemon=True)
    initial = pattern(10, DISK_BYTES)
    read_only = pattern(11, RO_DISK_BYTES)
    plan = correctness_plan(initial, read_only)
    final = bytes(plan.image)

    ours = start_backend(tmp_path, image_bytes=initial, queues=2, name="ours")
    ours_ro = start_backend(tmp_path, image_bytes=read_only, queues=1, read_only=True,
                            name="ours-ro")
    try:
        found = run_guest(tmp_path, "ours", plan,
                          [Disk(ours.socket, 2), Disk(ours_ro.socket, 1)], (ours, ours_ro))
    finally:
        assert ours.stop() == 0 and ours_ro.stop() == 0
    check(found, plan, "our back-end")
    assert ours.image.read_bytes() == final  # every byte of the disk after shutdown
    assert ours_ro.image.read_bytes() == read_only
    log = ours.log_text()
    assert "Traceback" not in log and "ERROR" not in log.upper().replace("IOERR", ""), log
    per_queue = [line for line in log.splitlines() if "requests per queue" in line][-1]
    counts = [int(value) for value in per_queue.split(":")[-1].split(",")]
    assert len(counts) == 2 and all(count > 0 for count in counts), per_queue
    stat = [int(value) for value in found["stat"].split()]
    assert stat[0] > 0 and stat[4] > 0  # reads and writes completed
    assert len(stat) >= 17 and stat[15] > 0, found["stat"]  # flushes: fsync reached us

    theirs_image = tmp_path / "theirs.img"
    theirs_image.write_bytes(initial)
    theirs_ro_image = tmp_path / "theirs-ro.img"
    theirs_ro_image.write_bytes(read_only)
    sockets = [str(tmp_path / "theirs.sock"), str(tmp_path / "theirs-ro.sock")]
    daemons = [subprocess.Popen(nice(storage_daemon(str(image), path, queues=queues,
                                                    read_only=ro)),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
               for image, path, queues, ro in ((theirs_image, sockets[0], 2, False),
                                               (theirs_ro_image, sockets[1], 1, True))]
    try:
        for path, daemon in zip(sockets, daemons, strict=True):
            wait_for_socket(path, 60, daemon)
        found_theirs = run_guest(tmp_path, "theirs", plan,
                                 [Disk(sockets[0], 2), Disk(sockets[1], 1)])
    finally:
        for daemon in daemons:
            daemon.terminate()
            daemon.wait(60)
    check(found_theirs, plan, "qemu-storage-daemon")
    assert theirs_image.read_bytes() == final
    assert {name: found[name] for name in plan.expected} == \
        {name: found_theirs[name] for name in plan.expected}


def _inflight_area(backend: BackendProcess) -> InflightArea | None:
    """The back-end's inflight log, mapped here too (QEMU hands it the memfd once the
    device starts), or None before that."""
    for entry in os.listdir(f"/proc/{backend.process.pid}/fd"):
        path = f"/proc/{backend.process.pid}/fd/{entry}"
        try:
            if "vhost-user-inflight" not in os.readlink(path):
                continue
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            size = os.fstat(fd).st_size
            return InflightArea(fd, size, 0, size // queue_area_size(128), 128)
        finally:
            os.close(fd)  # the area keeps its own mapping
    return None


def _unfinished(area: InflightArea) -> int:
    """How many chains the log holds that are certainly unfinished (not the one whose
    used entry may already be published)."""
    return sum(len([head for head in area.pending(index)
                    if head != area.last_batch_head(index)])
               for index in range(area.num_queues))


def _wait_stopped(pid: int) -> None:
    """Until SIGSTOP has taken effect (the signal is asynchronous)."""
    for _ in range(10_000):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return
        time.sleep(0.0005)


def _kill_mid_io(backend: BackendProcess, guest: subprocess.Popen[bytes],
                 console: Path) -> None:
    """SIGKILL the back-end while its log holds chains it has not finished.

    Watches the shared log and stops the back-end only when it shows chains in flight
    (then looks again, stopped): the back-end mostly waits for the (emulated, slow)
    guest, and stopping it blindly every few milliseconds caught it idle through a whole
    workload on a loaded machine. Fails if the guest's writers end first, the guest or
    the back-end exits, or `GUEST_TIMEOUT` passes; never leaves the back-end stopped."""
    area: InflightArea | None = None
    looks = stops = 0
    deadline = time.monotonic() + GUEST_TIMEOUT
    next_console = 0.0
    while guest.poll() is None and time.monotonic() < deadline:
        if backend.process.poll() is not None:
            raise AssertionError(f"the back-end exited ({backend.process.returncode}) "
                                 f"before a stop caught chains in flight")
        if time.monotonic() >= next_console:  # the console, now and then
            if "RECONNECT-WRITES-DONE" in console.read_text(errors="replace"):
                break
            next_console = time.monotonic() + 0.05
            if area is None:
                area = _inflight_area(backend)
        looks += 1
        if area is None or _unfinished(area) == 0:
            time.sleep(0.0005)
            continue
        stops += 1
        backend.process.send_signal(signal.SIGSTOP)
        try:
            _wait_stopped(backend.process.pid)
            if _unfinished(area) > 0:
                backend.process.kill()
                backend.process.wait()
                return
        finally:
            if backend.process.poll() is None:
                backend.process.send_signal(signal.SIGCONT)
    raise AssertionError(f"no stop caught the back-end with chains in flight ({looks} "
                         f"looks, {stops} stops)")


def test_backend_killed_mid_io_resumes_without_losing_a_byte(tmp_path: Path) -> None:
    """SIGKILL the back-end while its inflight log holds chains it took and had not
    returned (stopped first with SIGSTOP to look: bounded retries until it does), start
    a new one on the same socket; QEMU reconnects and hands it the log, and it resubmits
    them. The guest's writers all finish, their checksums and every byte of the image
    match, and the new back-end says what it resubmitted."""
    parts = need_guest()
    initial = pattern(20, DISK_BYTES)
    plan = reconnect_plan(initial)
    backend = start_backend(tmp_path, image_bytes=initial, queues=2, name="killed")
    image = backend.image
    initrd = tmp_path / "reconnect.initrd.gz"
    build_initramfs(parts, init_script("\n".join(plan.lines) + "\n", ["vda"]), plan.files(),
                    initrd)
    console = tmp_path / "reconnect.console"
    guest = start_guest(parts, initrd, [Disk(backend.socket, 2, reconnect=True)], console)
    restarted: list[BackendProcess] = []
    try:
        assert wait_for_line(console, "RECONNECT-START", GUEST_TIMEOUT, guest), \
            console.read_text(errors="replace")[-3000:]
        _kill_mid_io(backend, guest, console)
        backend = start_backend(tmp_path, image=image, queues=2, name="restarted",
                                socket_path=backend.socket)
        restarted.append(backend)
        output = wait_guest(guest, console, GUEST_TIMEOUT)
    finally:
        if guest.poll() is None:
            guest.kill()
            guest.wait()
        assert backend.stop() == 0
    assert CONSOLE_END in output and "GUEST-ERROR" not in output, output[-3000:]
    check(checksums(results(output)), plan, "restarted back-end")
    assert image.read_bytes() == bytes(plan.image)
    assert restarted[0].wait_log("inflight requests", 5), restarted[0].log_text()
