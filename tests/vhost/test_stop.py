"""SIGTERM stops the back-end process promptly and cleanly in every state of its life.

Each test starts a real `vm-memory vhost-user-blk`, brings it to one state, sends SIGTERM
and requires it to exit within `STOP_BOUND_SECONDS` (a liveness bound, not a speed
target), with status 0, the socket file removed and no traceback. The states where a
signal used to be swallowed are reached deterministically and the test checks, at the
moment it signals, that the back-end is in that state:

- a front-end that stopped mid-message or does not read its replies: the server was
  blocked in a receive or a send that Python retries after the handler ran (PEP 475);
- the signal delivered on a queue thread (POSIX lets a process-directed signal land on
  any thread that does not block it; qemu-user does so): its C-level handler ran there
  while the main thread slept in `select` and nothing woke it. `tgkill` puts it there.

The racy moments of a malformed message and of a front-end with running queues leaving
are reached by freezing the back-end (SIGSTOP) while the event and SIGTERM are both
delivered, so it finds them pending together; each also runs unfrozen, SIGTERM at once
and after the event was logged. Start-up is hit with bounded, growing delays until a
signal landed both before and after the back-end was ready.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from support import provoke

from vm_memory import GuestAddress, GuestMemoryMmap
from vm_memory_vhost import Request
from vm_memory_vhost.frontend import Frontend
from vm_memory_vhost.protocol import CONFIG_HEADER, HEADER, U64
from vm_memory_virtio import QueueLayout

from .backend_process import BackendProcess, spawn_backend, start_backend

STOP_BOUND_SECONDS = 60.0
"""How long a stop may take before the test calls the back-end hung (a clean stop takes
well under a second natively, seconds under qemu-user on a loaded machine)."""
ATTEMPTS = 10
"""Bound on the retries that aim a signal at a racy moment."""
MIB = 1 << 20
LAYOUTS = [QueueLayout.contiguous(64, GuestAddress(0x1000)),
           QueueLayout.contiguous(64, GuestAddress(0x4000))]
SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def stop_within_bound(backend: BackendProcess, send: Callable[[], None] | None = None,
                      *, then: Callable[[], None] | None = None) -> int:
    """Send SIGTERM (by `send`, or to the process), call `then` (to look at the state
    the signal found), and wait for the exit: its status. Fails, killing it, if it is
    still alive after the bound."""
    if send is None:
        backend.process.send_signal(signal.SIGTERM)
    else:
        send()
    if then is not None:
        then()
    try:
        return backend.process.wait(STOP_BOUND_SECONDS)
    except subprocess.TimeoutExpired:
        backend.process.kill()
        backend.process.wait()
        pytest.fail(f"the back-end did not exit within {STOP_BOUND_SECONDS:.0f} s of "
                    f"SIGTERM:\n{backend.log_text()}")


def assert_stopped_cleanly(backend: BackendProcess, status: int) -> None:
    log = backend.log_text()
    assert status == 0, log
    assert "SIGTERM: shutting down" in log and "stopped:" in log, log
    assert "Traceback" not in log, log
    assert not os.path.exists(backend.socket)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[BackendProcess]:
    process = start_backend(tmp_path, sectors=64)
    yield process
    if process.process.poll() is None:  # a failed test left it running
        process.process.kill()
        process.process.wait()


def queue_count(frontend: Frontend) -> int:
    """GET_QUEUE_NUM: a round trip, so every message sent before it was handled."""
    count: int = U64.unpack(frontend.call(Request.GET_QUEUE_NUM))[0]
    return count


def unread_by_peer(sock: socket.socket) -> int:
    """Bytes this socket sent that the peer has not received yet (SIOCOUTQ)."""
    count: int = struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0]
    return count


def readable(sock: socket.socket) -> int:
    """Bytes waiting to be received on this socket (SIOCINQ)."""
    count: int = struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0" * 4))[0]
    return count


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STOP_BOUND_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.01)


# ---- a front-end that holds the server in a wait -------------------------------------

@pytest.mark.parametrize("sent", ["5 of the header's 12 bytes",
                                  "the header and 2 of its 8 payload bytes"])
def test_sigterm_stops_a_backend_waiting_for_the_rest_of_a_message(
        backend: BackendProcess, sent: str) -> None:
    data = (HEADER.pack(Request.SET_FEATURES, 1, 8)[:5] if sent.startswith("5") else
            HEADER.pack(Request.SET_FEATURES, 1, 8) + b"\0\0")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(backend.socket)
        sock.sendall(data)
        # the back-end took every byte sent: it is in the middle of the message, waiting
        wait_for(lambda: unread_by_peer(sock) == 0, "took the bytes")
        status = stop_within_bound(backend)
    assert_stopped_cleanly(backend, status)


def test_sigterm_stops_a_backend_whose_replies_are_not_read(backend: BackendProcess) -> None:
    """GET_CONFIG requests (1.4 MB of them) whose replies the front-end never reads: the
    back-end fills its socket buffer and waits to send the next reply, for good."""
    config = HEADER.pack(Request.GET_CONFIG, 1, CONFIG_HEADER.size + 256) + \
        CONFIG_HEADER.pack(0, 256, 0) + bytes(256)
    requests = memoryview(config * 5000)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(backend.socket)
        sock.setblocking(False)
        # Send what it takes; blocked = requests it has not read, and neither they nor
        # the replies waiting here changed for 3 looks in a row.
        sent, state, unchanged = 0, (-1, -1, -1), 0
        while unchanged < 3 and sent < len(requests):
            with contextlib.suppress(BlockingIOError):
                sent += sock.send(requests[sent:])
            previous, state = state, (sent, unread_by_peer(sock), readable(sock))
            unchanged = unchanged + 1 if state == previous and state[1] > 0 else 0
            time.sleep(0.5)
        assert unchanged == 3, f"the back-end kept up with {sent} bytes of requests"
        status = stop_within_bound(backend)
    assert_stopped_cleanly(backend, status)


# ---- the signal delivered on a queue thread --------------------------------------------

def queue_threads(pid: int) -> list[int]:
    """The back-end's threads other than the main one that do not block SIGTERM (under
    qemu-user, the emulator's own threads block every signal)."""
    threads: list[int] = []
    for name in os.listdir(f"/proc/{pid}/task"):
        if int(name) == pid:
            continue
        with open(f"/proc/{pid}/task/{name}/status") as status:
            blocked = next(int(line.split()[1], 16) for line in status
                           if line.startswith("SigBlk:"))
        if not blocked & SIGTERM_BIT:
            threads.append(int(name))
    return threads


def test_sigterm_on_a_queue_thread_stops_the_backend(backend: BackendProcess) -> None:
    """With the front-end connected and idle, the main thread sleeps in `select` and the
    queue threads in `poll`; the signal lands on a queue thread."""
    libc = ctypes.CDLL(None, use_errno=True)
    memory = GuestMemoryMmap.from_ranges_memfd([(GuestAddress(0), MIB)])
    with Frontend(backend.socket) as frontend:
        frontend.negotiate()
        assert frontend.set_mem_table(memory) == 0
        for index, layout in enumerate(LAYOUTS):
            frontend.setup_queue(memory, index, layout)
        assert queue_count(frontend) == 2  # a reply: every message before it was handled
        wait_for(lambda: len(queue_threads(backend.process.pid)) >= len(LAYOUTS),
                 "started its queue threads")
        target = queue_threads(backend.process.pid)[0]

        def on_the_queue_thread() -> None:
            if libc.tgkill(backend.process.pid, target, signal.SIGTERM) != 0:
                raise OSError(ctypes.get_errno(), "tgkill")

        status = stop_within_bound(backend, on_the_queue_thread)
        assert frontend.closed_by_peer()
    assert_stopped_cleanly(backend, status)


# ---- racy moments: start-up by growing delays, the rest frozen ------------------------

def test_sigterm_during_startup_kills_or_stops_it_cleanly(tmp_path: Path) -> None:
    """SIGTERM 0, 0.05, 0.1, 0.2 ... s after the start, until one landed before the
    back-end was ready and one after. Before its handler is in place the default action
    ends the process (it has made no socket yet); from then on it stops cleanly."""
    outcomes: list[tuple[float, int, bool]] = []  # delay, exit status, before ready

    def attempt() -> list[tuple[float, int, bool]]:
        delay = 0.05 * 2 ** (len(outcomes) - 1) if outcomes else 0.0
        backend = spawn_backend(tmp_path, sectors=64, name=f"starting{len(outcomes)}")
        time.sleep(delay)
        early = False

        def look() -> None:
            nonlocal early
            early = "serving" not in backend.log_text()  # signalled before it was ready

        status = stop_within_bound(backend, then=look)
        text = backend.log_text()
        assert "Traceback" not in text, text
        assert not os.path.exists(backend.socket), text
        if status == -signal.SIGTERM:
            assert early, text  # only before it served
        else:
            assert_stopped_cleanly(backend, status)
        outcomes.append((delay, status, early))
        return outcomes

    # 12 attempts: the last waits 51 s, longer than an emulated start on a loaded machine
    provoke(attempt, lambda results: {early for _, _, early in results} == {True, False},
            attempts=12, what="SIGTERM both before and after the back-end was ready")


@contextlib.contextmanager
def frozen(backend: BackendProcess) -> Generator[None]:
    """The back-end stopped (SIGSTOP: every one of its threads) until the block ends,
    then continued. What the block does to it (a message, a front-end leaving, SIGTERM)
    is all pending at once when it resumes: the moment a racing signal aims at, reached
    every time, on any machine (a fast one notices a leave before a test can signal)."""
    pid = backend.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: all(thread_state(pid, task) == "T"
                             for task in os.listdir(f"/proc/{pid}/task")), "stopped")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def thread_state(pid: int, task: str) -> str:
    """One thread's state letter in /proc (T: stopped); "T" for a thread that is gone."""
    try:
        with open(f"/proc/{pid}/task/{task}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return "T"


@pytest.mark.parametrize("moment", ["frozen", "at once", "after"])
def test_sigterm_during_and_after_a_malformed_message(tmp_path: Path, moment: str) -> None:
    """The signal while the back-end refuses a malformed message (a reply where a request
    belongs): frozen, the message and SIGTERM reach it together; at once, SIGTERM follows
    the message, whichever it handles first; after, once it logged the refusal."""
    backend = start_backend(tmp_path, name="malformed")
    with Frontend(backend.socket) as frontend:
        message = HEADER.pack(Request.GET_FEATURES, 5, 0)  # a reply
        if moment == "frozen":
            with frozen(backend):
                frontend.send_raw(message)
                backend.process.send_signal(signal.SIGTERM)
                # the state the signal found: nothing of the message handled
                assert "a reply where a request" not in backend.log_text()
            status = stop_within_bound(backend, lambda: None)
        else:
            frontend.send_raw(message)
            if moment == "after":
                assert frontend.closed_by_peer()
                assert backend.wait_log("a reply where a request")
            status = stop_within_bound(backend)
    assert_stopped_cleanly(backend, status)


@pytest.mark.parametrize("moment", ["frozen", "at once", "after"])
def test_sigterm_as_a_frontend_with_running_queues_leaves(tmp_path: Path, moment: str) -> None:
    """The teardown of the malformed-message tests: a front-end with a queue thread
    closes and SIGTERM follows, while the back-end stops that thread. Frozen, the leave
    and the signal reach it together; at once, SIGTERM follows the close, whichever it
    notices first; after, once it logged the leave (it stops the queue thread then)."""
    backend = start_backend(tmp_path, name="leaving")
    memory = GuestMemoryMmap.from_ranges_memfd([(GuestAddress(0), MIB)])
    frontend = Frontend(backend.socket)
    frontend.negotiate()
    assert frontend.set_mem_table(memory) == 0
    frontend.setup_queue(memory, 0, LAYOUTS[0])
    assert queue_count(frontend) == 2
    wait_for(lambda: len(queue_threads(backend.process.pid)) >= 1, "started its queue")
    if moment == "frozen":
        with frozen(backend):
            frontend.close()
            backend.process.send_signal(signal.SIGTERM)
            # the state the signal found: the leave not noticed, the queue thread running
            assert "front-end disconnected" not in backend.log_text()
            assert queue_threads(backend.process.pid)
        status = stop_within_bound(backend, lambda: None)
    else:
        frontend.close()
        if moment == "after":
            assert backend.wait_log("front-end disconnected")
        status = stop_within_bound(backend)
    assert_stopped_cleanly(backend, status)
