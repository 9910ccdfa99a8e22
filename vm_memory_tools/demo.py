"""The demo: a guest driver and a Python device exchange messages through a split ring.

`run_demo` builds 1 MiB of guest RAM in a sealed memfd (`GuestMemoryMmap`), puts a
virtio split ring in it (`vm_memory_virtio`, layout in `vm_memory_tools.demo_guest`)
and runs the two sides at once:

- the driver ("the guest"): a real KVM vCPU running the hand-encoded real-mode program
  `demo_guest.ring_driver_program`, where ``/dev/kvm`` is usable; otherwise (or with
  ``--no-kvm``) a second Python process that receives the memory table and the memfd
  over a Unix socket (`sharing.send_memory`/`receive_memory`, the vhost-user way) and
  runs the same protocol with `vm_memory_virtio.DriverQueue`;
- the device: Python code in this process (`DeviceModel`, on `vm_memory_virtio.SplitQueue`)
  that takes each chain with
  ``read_atomic(ACQUIRE)`` on the available index, checks the request, writes a reply
  and publishes it with ``write_atomic(RELEASE)`` on the used index.

Both sides check every message (the device the request, the guest the reply); the run
fails if any message is lost, duplicated, reordered or corrupted.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TextIO

from vm_memory.address import GuestAddress
from vm_memory.aligned_address import AlignedGuestAddress
from vm_memory.errors import GuestMemoryError
from vm_memory.guest_memory import GuestMemory
from vm_memory.mmap_memory import GuestMemoryMmap
from vm_memory.sharing import receive_memory, send_memory
from vm_memory_tools.demo_guest import (
    CODE_ADDRESS,
    DONE_PORT,
    DONE_VALUE,
    MEMORY_SIZE,
    MESSAGE_BYTES,
    QUEUE_LAYOUT,
    REPLY_MAGIC,
    REQUEST_MAGIC,
    SLOTS,
    STATUS_ADDRESS,
    GuestStatus,
    Reply,
    Request,
    message_value,
    reply_buffer,
    reply_result,
    request_buffer,
    request_checksum,
    ring_driver_program,
)
from vm_memory_tools.kvm import IoDirection, KvmError, KvmVm, VcpuExit, kvm_unavailable_reason
from vm_memory_virtio import DescriptorChain, DriverQueue, SplitQueue

__all__ = [
    "DEFAULT_MESSAGES",
    "DemoResult",
    "DeviceModel",
    "default_timeout",
    "guest_process_main",
    "run_demo",
]

DEFAULT_MESSAGES: Final = 5000
"""A few thousand: 0.2-1.5 s with an emulated KVM guest on a shared 2-core machine, and
about the same with the second-process guest (measured)."""
_STATUS: Final = AlignedGuestAddress.new(GuestStatus, GuestAddress(STATUS_ADDRESS))
_IDLE_POLLS_BEFORE_SLEEP: Final = 20_000  # ~10-20 ms of spinning, then 50 us naps
_IDLE_SLEEP_SECONDS: Final = 50e-6
_BASE_TIMEOUT_SECONDS: Final = 30.0
_TIMEOUT_PER_MESSAGE_SECONDS: Final = 0.005
_MAX_REPORTED_ERRORS: Final = 5
CORRUPT_CHOICES: Final = ("request", "reply")


def default_timeout(messages: int) -> float:
    """How long the exchange of ``messages`` may take before the run fails (``--timeout``)."""
    return _BASE_TIMEOUT_SECONDS + messages * _TIMEOUT_PER_MESSAGE_SECONDS


def _flip_byte(memory: GuestMemory, address: GuestAddress) -> None:
    """Corrupt one byte of guest memory (for the `--corrupt-one` self-test)."""
    original = memory.read_bytes(address, 1)[0]
    memory.write_slice(address, bytes((original ^ 0x40,)))


@dataclass
class DeviceModel:
    """The device side of the demo: verifies each request and answers it in order.

    ``corrupt`` (a self-test) flips one byte of message ``corrupt_seq``'s request
    before the device reads it, or of its reply after the device wrote it, so the run
    can be seen to fail.
    """

    memory: GuestMemory
    messages: int
    progress: Callable[[int], None] = lambda handled: None
    corrupt: str | None = None
    corrupt_seq: int = 1
    handled: int = 0
    verified: int = 0
    errors: list[str] = field(default_factory=list[str])
    first_message_at: float | None = None
    """`time.perf_counter()` when the first chain arrived (the guest is up)."""
    last_message_at: float | None = None

    def serve(self, deadline: float, driver_gone: Callable[[], bool]) -> None:
        """Handle every message, or stop at ``deadline`` or when the driver is gone."""
        try:
            self._serve(deadline, driver_gone)
        except Exception as error:  # a device bug must show in the result, not vanish
            self.errors.append(f"device: stopped by {error!r} after {self.handled} messages")

    def _serve(self, deadline: float, driver_gone: Callable[[], bool]) -> None:
        device = SplitQueue(self.memory, QUEUE_LAYOUT)
        idle = 0
        while self.handled < self.messages:
            try:
                chain = device.pop()
            except GuestMemoryError as error:  # VirtqueueError among them
                self.errors.append(f"device: ring broken after {self.handled} messages: "
                                   f"{error}")
                return
            if chain is None:
                idle += 1
                if idle >= _IDLE_POLLS_BEFORE_SLEEP:
                    if driver_gone() or time.monotonic() > deadline:
                        return
                    time.sleep(_IDLE_SLEEP_SECONDS)
                continue
            idle = 0
            now = time.perf_counter()
            if self.first_message_at is None:
                self.first_message_at = now
            self.last_message_at = now
            seq = self.handled + 1
            try:
                self._answer(chain, seq)
            except GuestMemoryError as error:
                self.errors.append(f"message {seq}: bad buffer: {error}")
            device.add_used(chain.head, MESSAGE_BYTES)
            self.handled = seq
            self.progress(seq)

    def _answer(self, chain: DescriptorChain, seq: int) -> None:
        shape = [(False, length) for _, length in chain.readable] + \
            [(True, length) for _, length in chain.writable]
        if shape != [(False, MESSAGE_BYTES), (True, MESSAGE_BYTES)]:
            self.errors.append(f"message {seq}: chain of (writable, length) {shape}, expected "
                               f"a {MESSAGE_BYTES}-byte request and a {MESSAGE_BYTES}-byte "
                               "reply buffer")
            return
        request_at = GuestAddress(chain.readable[0][0])
        reply_at = GuestAddress(chain.writable[0][0])
        if self.corrupt == "request" and seq == self.corrupt_seq:
            _flip_byte(self.memory, request_at + 4)
        request = self.memory.read_obj(AlignedGuestAddress.new(Request, request_at))
        value = message_value(seq)
        problems = [
            what for what, bad in (
                (f"sequence number {request.seq}", request.seq != seq),
                (f"value {request.value:#x} (expected {value:#x})", request.value != value),
                (f"checksum {request.checksum:#x}",
                 request.checksum != request_checksum(request.seq, request.value)),
                (f"magic {request.magic:#x}", request.magic != REQUEST_MAGIC),
            ) if bad
        ]
        if problems:
            self.errors.append(f"message {seq}: request corrupted: " + ", ".join(problems))
        else:
            self.verified += 1
        reply = Reply(request.seq, reply_result(request.value), 1 if problems else 0,
                      REPLY_MAGIC)
        self.memory.write_obj(AlignedGuestAddress.new(Reply, reply_at), reply)
        if self.corrupt == "reply" and seq == self.corrupt_seq:
            _flip_byte(self.memory, reply_at + 4)


@dataclass
class DemoResult:
    """What one demo run did; `ok` is the verdict."""

    mode: str
    messages: int
    seconds: float
    device: DeviceModel
    guest: GuestStatus
    guest_errors: list[str]

    @property
    def exchange_seconds(self) -> float | None:
        """From the first message's arrival to the last one's (None: fewer than two)."""
        first, last = self.device.first_message_at, self.device.last_message_at
        if first is None or last is None or self.device.handled < 2:
            return None
        return last - first

    @property
    def lost(self) -> int:
        """Messages that never made the round trip."""
        return self.messages - min(self.device.handled, self.guest.reaped)

    @property
    def bad_requests(self) -> int:
        """Requests the device found corrupted or malformed."""
        return self.device.handled - self.device.verified

    @property
    def ok(self) -> bool:
        """Every message sent, verified by the device, answered and verified by the guest."""
        return (not self.guest_errors and not self.device.errors
                and self.guest.sent == self.messages
                and self.device.verified == self.messages
                and self.guest.verified == self.messages and self.guest.bad == 0)


def _kvm_guest(memory: GuestMemoryMmap, messages: int, timeout: float, model: DeviceModel,
               out: TextIO) -> list[str]:
    """Run the driver on a KVM vCPU (this thread) beside the device (another thread)."""
    program = ring_driver_program(messages)
    memory.write_slice(GuestAddress(CODE_ADDRESS), program)
    print(f"  guest    KVM vCPU running {len(program)} bytes of hand-encoded real-mode "
          "code (the driver)", file=out)
    print("  device   Python thread: read_atomic(ACQUIRE) on avail.idx, "
          "write_atomic(RELEASE) on used.idx", file=out, flush=True)
    errors: list[str] = []
    done_reports: list[int] = []

    def on_exit(exit_: VcpuExit) -> bytes | None:
        io = exit_.io
        if io is not None and io.direction is IoDirection.OUT and io.port == DONE_PORT:
            done_reports.append(io.data[0])
            return None
        raise KvmError(f"unexpected exit: {exit_}", operation="demo")

    guest_done = threading.Event()
    device_thread = threading.Thread(
        target=model.serve, args=(time.monotonic() + timeout, guest_done.is_set),
        name="demo-device", daemon=True)
    with KvmVm() as vm:
        vm.add_memory(0, 0, MEMORY_SIZE, memory.get_host_address(GuestAddress(0)))
        vcpu = vm.create_vcpu()
        vcpu.set_real_mode(CODE_ADDRESS)
        device_thread.start()
        try:
            vcpu.run_until_halt(max_exits=1_000_000, handle_exit=on_exit, timeout=timeout)
        except KvmError as error:
            errors.append(f"guest: {error}")
        finally:
            guest_done.set()
            device_thread.join()
    if not errors and done_reports != [DONE_VALUE]:
        errors.append(f"guest: halted without reporting done (port writes: {done_reports})")
    return errors


def _process_guest(memory: GuestMemoryMmap, messages: int, timeout: float, model: DeviceModel,
                   out: TextIO) -> list[str]:
    """Run the driver in a second process that maps the same memfd (received over a socket)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        with theirs:
            child = subprocess.Popen(
                [sys.executable, "-m", "vm_memory_tools", "demo-guest", "--socket-fd",
                 str(theirs.fileno()), "--messages", str(messages), "--timeout", str(timeout)],
                pass_fds=(theirs.fileno(),))
        print(f"  guest    second process (pid {child.pid}): the same memfd, received with "
              "its memory table over a Unix socket (send_memory/receive_memory)", file=out)
        print("  device   this process: read_atomic(ACQUIRE) on avail.idx, "
              "write_atomic(RELEASE) on used.idx", file=out, flush=True)
        send_memory(ours, memory)
        model.serve(time.monotonic() + timeout, lambda: child.poll() is not None)
    errors: list[str] = []
    try:
        code = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        return ["guest: the guest process did not finish in time (killed)"]
    if code != 0:
        errors.append(f"guest: the guest process exited with status {code}")
    return errors


def run_demo(messages: int = DEFAULT_MESSAGES, *, use_kvm: bool = True,
             corrupt: str | None = None, out: TextIO | None = None,
             timeout: float | None = None) -> DemoResult:
    """Run the exchange, print progress and the result to ``out`` (default stdout), return
    the result. Fails (lost messages) if the exchange takes longer than ``timeout``
    seconds (default: `default_timeout`)."""
    timeout = default_timeout(messages) if timeout is None else timeout
    stream = sys.stdout if out is None else out
    reason = kvm_unavailable_reason() if use_kvm else "--no-kvm given"
    mode = "KVM guest" if reason is None else "second-process guest"
    memory = GuestMemoryMmap.from_ranges_memfd([(GuestAddress(0), MEMORY_SIZE)])
    print(f"vm-memory demo: {messages:,} messages through a virtio-style split ring in "
          "guest memory", file=stream)
    if reason is not None:
        print(f"  KVM      not used: {reason}; a second process plays the guest", file=stream)
    print(f"  memory   {MEMORY_SIZE >> 20} MiB of guest RAM in a sealed memfd "
          f"(GuestMemoryMmap); queue of {QUEUE_LAYOUT.size} at "
          f"{QUEUE_LAYOUT.desc_table.raw_value():#x}, {SLOTS} messages in flight", file=stream)
    quarter = max(1, messages // 4)

    def progress(handled: int) -> None:
        if handled % quarter == 0 or handled == messages:
            print(f"  progress {handled:>{len(f'{messages:,}')},}/{messages:,} messages "
                  f"verified by the device ({time.perf_counter() - started:.2f} s)",
                  file=stream, flush=True)

    model = DeviceModel(memory, messages, progress, corrupt, max(1, messages // 2))
    started = time.perf_counter()
    if reason is None:
        guest_errors = _kvm_guest(memory, messages, timeout, model, stream)
    else:
        guest_errors = _process_guest(memory, messages, timeout, model, stream)
    seconds = time.perf_counter() - started
    result = DemoResult(mode, messages, seconds, model, memory.read_obj(_STATUS), guest_errors)
    _print_result(result, stream)
    return result


def _print_result(result: DemoResult, out: TextIO) -> None:
    guest, device = result.guest, result.device
    exchange = result.exchange_seconds
    verdict = "OK" if result.ok else "FAILED"
    print(f"result   {verdict}: {guest.sent:,} sent by the guest, {device.verified:,} "
          f"verified by the device, {guest.verified:,} replies verified by the guest; "
          f"{result.lost:,} lost, {result.bad_requests:,} bad requests, {guest.bad:,} bad "
          "replies", file=out)
    timing = f"         {result.seconds:.2f} s in all"
    if exchange is not None and exchange > 0:
        rate = (result.device.handled - 1) / exchange
        timing += f"; exchange {exchange:.2f} s, {rate:,.0f} messages/s"
    print(f"{timing} (mode: {result.mode})", file=out)
    problems = result.guest_errors + device.errors
    if guest.bad:
        problems.append(f"guest: {guest.bad} bad replies, the first for message "
                        f"{guest.first_bad}")
    for problem in problems[:_MAX_REPORTED_ERRORS]:
        print(f"  error    {problem}", file=out)
    if len(problems) > _MAX_REPORTED_ERRORS:
        print(f"  error    ... and {len(problems) - _MAX_REPORTED_ERRORS} more", file=out)
    out.flush()


def _python_driver(memory: GuestMemory, messages: int, deadline: float) -> GuestStatus:
    """The driver in Python: the same protocol as `ring_driver_program`."""
    driver = DriverQueue(memory, QUEUE_LAYOUT)
    status = GuestStatus()
    in_flight: deque[tuple[int, int]] = deque()  # (head, seq), oldest first
    seq = 1
    idle = 0
    while status.reaped < messages:
        reaped = driver.used()
        for used_head, _ in reaped:
            head, expected = in_flight.popleft()
            reply = memory.read_obj(AlignedGuestAddress.new(Reply, reply_buffer(expected)))
            status.reaped += 1
            if used_head == head and reply.seq == expected \
                    and reply.result == reply_result(message_value(expected)):
                status.verified += 1
            else:
                status.bad += 1
                status.first_bad = status.first_bad or expected
        if reaped:
            continue
        if seq <= messages and len(in_flight) < SLOTS:
            value = message_value(seq)
            memory.write_obj(AlignedGuestAddress.new(Request, request_buffer(seq)),
                             Request(seq, value, request_checksum(seq, value), REQUEST_MAGIC))
            head = driver.add([(request_buffer(seq).raw_value(), MESSAGE_BYTES)],
                              [(reply_buffer(seq).raw_value(), MESSAGE_BYTES)])
            in_flight.append((head, seq))
            status.sent = seq
            seq += 1
            continue
        idle += 1
        if idle >= _IDLE_POLLS_BEFORE_SLEEP:
            idle = 0
            if time.monotonic() > deadline:
                break
            time.sleep(_IDLE_SLEEP_SECONDS)
    return status


def guest_process_main(argv: list[str]) -> int:
    """The second-process guest: receive the memory, drive the ring, leave the counters
    in guest memory (where the KVM guest leaves them too)."""
    parser = argparse.ArgumentParser(prog="vm-memory demo-guest")
    parser.add_argument("--socket-fd", type=int, required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    arguments = parser.parse_args(argv)
    with socket.socket(fileno=arguments.socket_fd) as sock:
        memory = receive_memory(sock)
    status = _python_driver(memory, arguments.messages, time.monotonic() + arguments.timeout)
    memory.write_obj(_STATUS, status)
    return 0 if status.reaped == arguments.messages else 1


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` subcommand's options."""
    parser.add_argument("--messages", type=_non_negative, default=DEFAULT_MESSAGES,
                        metavar="N", help=f"messages to exchange (default {DEFAULT_MESSAGES:,})")
    parser.add_argument("--no-kvm", action="store_true",
                        help="use a second process as the guest even where KVM works")
    parser.add_argument("--timeout", type=_positive_seconds, metavar="SECONDS",
                        help="fail if the exchange takes longer (default: 30 s + 5 ms per "
                             "message)")
    parser.add_argument("--corrupt-one", nargs="?", const="request", choices=CORRUPT_CHOICES,
                        help=argparse.SUPPRESS)


def demo_main(arguments: argparse.Namespace) -> int:
    """Run the demo from parsed arguments; 0 when every message checked out, else 1."""
    result = run_demo(arguments.messages, use_kvm=not arguments.no_kvm,
                      corrupt=arguments.corrupt_one, timeout=arguments.timeout)
    return 0 if result.ok else 1


def _non_negative(text: str) -> int:
    value = int(text, 0)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1e6) seconds")
    return value
