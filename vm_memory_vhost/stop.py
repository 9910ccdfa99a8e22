"""A stop request that wakes every wait of the server's thread, whichever thread (or signal)
makes it.

A signal handler that only sets a flag does not stop a thread blocked in a system call:
Python retries the call after running the handler (PEP 475), and a signal that lands on
another thread (a queue thread, or wherever qemu-user delivers it) does not even
interrupt the call, so the handler waits for the blocked thread to run Python code
again. Every wait of the server therefore polls `StopRequest`'s pipe beside what it
waits for; `request` writes to the pipe, and so does the C-level handler of any signal
once `wakeup_fd` is `signal.set_wakeup_fd`'s fd, before the Python handler has run.
"""

from __future__ import annotations

import contextlib
import os

from vm_memory_vhost.errors import StopRequested


class StopRequest:
    """Whether the server was asked to stop, and a pipe that is readable once it was (or
    once a signal arrived, so that its Python handler gets to run)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.reason: str | None = None
        """Why the server stops (e.g. "SIGTERM"); None until `request`."""

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def fileno(self) -> int:
        """The end to poll for reading (`select`, `selectors` and `poll` take this object)."""
        return self._read

    @property
    def wakeup_fd(self) -> int:
        """The end to write to: for `signal.set_wakeup_fd` (it is non-blocking)."""
        return self._write

    def request(self, reason: str) -> None:
        """Ask the server to stop (safe in a signal handler and from any thread)."""
        self.reason = reason
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self._write, b"\0")

    def woken(self) -> None:
        """Empty the pipe after a wake-up; raises `StopRequested` if a stop was requested.
        (A signal's Python handler runs before the next bytecode once the pipe woke this
        thread, so a stop it requested is seen here.)"""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass
        self.check()

    def check(self) -> None:
        """Raise `StopRequested` if a stop was requested."""
        if self.reason is not None:
            raise StopRequested(self.reason)

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)
