"""The `vm-memory vhost-user-blk` back-end as a subprocess, for the vhost tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PATIENCE_SECONDS = 300.0
"""How long a start or a stop may take before the test calls it hung: an upper bound, not an
expectation (an emulated back-end on a loaded machine took over 60 s to stop)."""


@dataclass
class BackendProcess:
    """A running back-end: its process, socket, image and log file."""

    process: subprocess.Popen[bytes]
    socket: str
    image: Path
    log: Path

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def wait_fd_count(self, expected: int, timeout: float = 30.0) -> int:
        """The fd count once it equals `expected` (or what it is after `timeout` s)."""
        deadline = time.monotonic() + timeout
        count = self.fd_count()
        while count != expected and time.monotonic() < deadline:
            time.sleep(0.05)
            count = self.fd_count()
        return count

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = PATIENCE_SECONDS) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text():
                return True
            time.sleep(0.05)
        return False

    def stop(self, signum: int = signal.SIGTERM, timeout: float = PATIENCE_SECONDS) -> int:
        """Signal it and wait; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout)


def spawn_backend(directory: Path, *, image_bytes: bytes | None = None,
                  sectors: int = 2048, queues: int = 2, read_only: bool = False,
                  name: str = "backend", image: Path | None = None,
                  socket_path: str | None = None) -> BackendProcess:
    """Start `vm-memory vhost-user-blk` on a new (or given) image; does not wait for it."""
    if image is None:
        image = directory / f"{name}.img"
        image.write_bytes(image_bytes if image_bytes is not None else
                          bytes((index * 13) & 0xFF for index in range(sectors * 512)))
    socket_path = socket_path or str(directory / f"{name}.sock")
    log = directory / f"{name}.log"
    command = [sys.executable, "-m", "vm_memory_tools", "vhost-user-blk",
               "--socket", socket_path, "--image", str(image), "--queues", str(queues),
               "--serial", name]
    if read_only:
        command.append("--read-only")
    with open(log, "ab") as stream:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stream,
                                   stderr=subprocess.STDOUT)
    return BackendProcess(process, socket_path, image, log)


def start_backend(directory: Path, **options: Any) -> BackendProcess:
    """`spawn_backend` (same options), then wait until it serves its socket."""
    backend = spawn_backend(directory, **options)
    if not backend.wait_log(f"on {backend.socket}"):
        backend.process.kill()
        backend.process.wait()
        raise RuntimeError(f"the back-end did not start: {backend.log_text()}")
    return backend
