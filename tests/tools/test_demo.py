"""The demo (``vm-memory demo``) and the split ring it runs on.

The demo runs in subprocesses, as a user runs it: with a real KVM guest where /dev/kvm
works and with a second process as the guest. Each mode must verify every message, and
each must fail (exit 1) when one request or one reply is corrupted in guest memory, so
both sides' checks are shown to bite. The split ring itself is exercised in-process,
including the protocol errors a device must refuse.
"""

from __future__ import annotations

import ctypes
import io
import os
import shutil
import subprocess
import sys
from typing import Final

import pytest
from support import ROOT, python_environment, require, run_python, unavailable

from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap, Ordering
from vm_memory_tools.demo import DeviceModel, run_demo
from vm_memory_tools.demo_guest import (
    MESSAGE_BYTES,
    QUEUE_LAYOUT,
    REQUEST_MAGIC,
    Request,
    message_value,
    reply_buffer,
    request_buffer,
    request_checksum,
    ring_driver_program,
)
from vm_memory_tools.kvm import kvm_unavailable_reason
from vm_memory_tools.split_ring import (
    VIRTQ_DESC_F_NEXT,
    Buffer,
    RingError,
    SplitRingDevice,
    SplitRingDriver,
    SplitRingLayout,
    VirtqDesc,
)

MESSAGES: Final = 300
EXCHANGE_TIMEOUT: Final = "300"
"""The demo's own ``--timeout``: generous, as a loaded machine may run it 20 times slower."""
TIMEOUT_SECONDS: Final = 600
"""The child process's: a hang guard beyond the demo's own."""


@pytest.fixture(params=[pytest.param([], id="kvm"),
                        pytest.param(["--no-kvm"], id="second-process")])
def mode(request: pytest.FixtureRequest) -> list[str]:
    """The demo's guest: a KVM vCPU (where /dev/kvm is usable), or a second process."""
    arguments: list[str] = request.param
    if not arguments:
        reason = kvm_unavailable_reason()
        require(None if reason is None else f"no usable KVM: {reason}")
    return arguments


def run_cli(*arguments: str, timeout: float = TIMEOUT_SECONDS) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "vm_memory_tools", *arguments, timeout=timeout)


def ok_line(messages: int) -> str:
    return (f"OK: {messages:,} sent by the guest, {messages:,} verified by the device, "
            f"{messages:,} replies verified by the guest; 0 lost, 0 bad requests, "
            "0 bad replies")


def test_demo_verifies_every_message(mode: list[str]) -> None:
    result = run_cli("demo", "--messages", str(MESSAGES), "--timeout", EXCHANGE_TIMEOUT, *mode)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ok_line(MESSAGES) in result.stdout
    expected_mode = "second-process guest" if mode else "KVM guest"
    assert f"(mode: {expected_mode})" in result.stdout
    assert f"progress {MESSAGES}/{MESSAGES} messages verified by the device" in result.stdout
    if mode:
        assert "KVM      not used: --no-kvm given" in result.stdout


def test_demo_fails_on_a_corrupted_request(mode: list[str]) -> None:
    result = run_cli("demo", "--messages", str(MESSAGES), "--timeout", EXCHANGE_TIMEOUT,
                     "--corrupt-one", *mode)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED:" in result.stdout
    corrupted = MESSAGES // 2
    assert f"message {corrupted}: request corrupted: value" in result.stdout
    assert f"{MESSAGES - 1:,} verified by the device" in result.stdout


def test_demo_fails_on_a_corrupted_reply(mode: list[str]) -> None:
    """The device verifies everything; only the guest's own check can catch this."""
    result = run_cli("demo", "--messages", str(MESSAGES), "--timeout", EXCHANGE_TIMEOUT,
                     "--corrupt-one", "reply", *mode)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{MESSAGES:,} verified by the device" in result.stdout
    assert f"{MESSAGES - 1:,} replies verified by the guest" in result.stdout
    assert f"guest: 1 bad replies, the first for message {MESSAGES // 2}" in result.stdout


def test_demo_says_so_and_falls_back_where_kvm_is_unusable() -> None:
    """/dev/kvm replaced by /dev/null in a private mount namespace: no KVM there."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        unavailable("needs root and unshare(1) to hide /dev/kvm in a mount namespace")
    probe = subprocess.run([unshare, "--mount", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        unavailable(f"cannot create a mount namespace here: {probe.stderr.decode().strip()}")
    script = (f"mount --bind /dev/null /dev/kvm 2>/dev/null || true; "
              f"exec {sys.executable} -m vm_memory_tools demo --messages 50 "
              f"--timeout {EXCHANGE_TIMEOUT}")
    result = subprocess.run([unshare, "--mount", "sh", "-c", script], cwd=ROOT,
                            env=python_environment(), capture_output=True, text=True,
                            timeout=TIMEOUT_SECONDS, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "KVM      not used: " in result.stdout
    assert "a second process plays the guest" in result.stdout
    assert ok_line(50) in result.stdout


def test_demo_in_process_api_reports_the_same() -> None:
    out = io.StringIO()
    result = run_demo(40, use_kvm=False, out=out, timeout=float(EXCHANGE_TIMEOUT))
    assert result.ok
    assert (result.guest.sent, result.guest.verified, result.device.verified) == (40, 40, 40)
    assert ok_line(40) in out.getvalue()


def test_demo_usage_errors_exit_2() -> None:
    result = run_cli("demo", "--messages", "-5")
    assert result.returncode == 2
    assert "is negative" in result.stderr
    result = run_cli("demo", "--timeout", "0")
    assert result.returncode == 2 and "is not in (0, 1e6) seconds" in result.stderr


def test_guest_program_rejects_counts_it_cannot_hold() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        ring_driver_program(1 << 31)
    assert ring_driver_program(0)[-1:] == b"\xf4"  # ends with hlt


# ---- The split ring, in-process ------------------------------------------------------

def ring_memory() -> GuestMemoryMmap:
    return GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x10000)])


def message(seq: int) -> list[Buffer]:
    return [Buffer(request_buffer(seq), MESSAGE_BYTES, False),
            Buffer(reply_buffer(seq), MESSAGE_BYTES, True)]


def test_ring_round_trip_across_index_wrap() -> None:
    """70,000 chains: both 16-bit indices wrap; every chain comes back whole and in order."""
    memory = ring_memory()
    driver = SplitRingDriver(memory, QUEUE_LAYOUT)
    device = SplitRingDevice(memory, QUEUE_LAYOUT)
    batch = QUEUE_LAYOUT.size // 2
    seq = 0
    for _ in range(70_000 // batch):
        heads = [driver.publish(message(seq + index)) for index in range(batch)]
        assert driver.free_descriptors == 0
        for index, head in enumerate(heads):
            chain = device.pop()
            assert chain is not None and chain.head == head
            assert chain.buffers == tuple(message(seq + index))
            device.push(chain.head, 7)
        assert device.pop() is None
        for head in heads:
            used = driver.pop_used()
            assert used is not None and (used.id, used.len) == (head, 7)
        assert driver.pop_used() is None
        seq += batch
    used_idx = memory.read_atomic(QUEUE_LAYOUT.used_idx(), Ordering.ACQUIRE)
    assert used_idx == seq % 0x10000 and seq > 0x10000


def test_ring_device_refuses_an_index_running_ahead() -> None:
    memory = ring_memory()
    device = SplitRingDevice(memory, QUEUE_LAYOUT)
    memory.write_atomic(QUEUE_LAYOUT.avail_idx(), QUEUE_LAYOUT.size + 1, Ordering.RELEASE)
    with pytest.raises(RingError, match="more than the queue size"):
        device.pop()


def test_ring_device_refuses_a_looping_chain() -> None:
    memory = ring_memory()
    driver = SplitRingDriver(memory, QUEUE_LAYOUT)
    device = SplitRingDevice(memory, QUEUE_LAYOUT)
    head = driver.publish(message(1))
    memory.write_obj(QUEUE_LAYOUT.descriptor(head),
                     VirtqDesc(0x5000, 16, VIRTQ_DESC_F_NEXT, head))  # points at itself
    with pytest.raises(RingError, match="a loop"):
        device.pop()


def test_ring_driver_refuses_an_unknown_head_and_a_full_table() -> None:
    memory = ring_memory()
    layout = SplitRingLayout.contiguous(4, GuestAddress(0x1000))
    driver = SplitRingDriver(memory, layout)
    device = SplitRingDevice(memory, layout)
    driver.publish(message(1))
    driver.publish(message(2))
    with pytest.raises(RingError, match="2 descriptors needed, 0 free"):
        driver.publish(message(3))
    chain = device.pop()
    assert chain is not None
    device.push(chain.head + 1, 0)  # not a head the driver published
    with pytest.raises(RingError, match="not in flight"):
        driver.pop_used()


def test_ring_layout_checks() -> None:
    with pytest.raises(ValueError, match="power of two"):
        SplitRingLayout(24, GuestAddress(0), GuestAddress(0x1000), GuestAddress(0x2000))
    with pytest.raises(ValueError, match="used ring at 0x2002 is not 4-byte aligned"):
        SplitRingLayout(16, GuestAddress(0), GuestAddress(0x1000), GuestAddress(0x2002))
    layout = SplitRingLayout.contiguous(256, GuestAddress(0x10000))
    assert layout.avail_ring == GuestAddress(0x10000 + 256 * 16)
    assert layout.used_ring.raw_value() % 4 == 0
    assert layout.end == layout.used_ring + 4 + 8 * 256 + 2


def test_device_model_catches_a_skipped_sequence_number() -> None:
    """A driver that loses message 1 and sends 2 first: the device names the gap."""
    memory = ring_memory()
    driver = SplitRingDriver(memory, QUEUE_LAYOUT)
    value = message_value(2)
    memory.write_obj(AlignedGuestAddress.new(Request, request_buffer(2)),
                     Request(2, value, request_checksum(2, value), REQUEST_MAGIC))
    driver.publish(message(2))
    model = DeviceModel(memory, 1)
    model.serve(deadline=0.0, driver_gone=lambda: True)
    assert model.handled == 1 and model.verified == 0
    assert model.errors == [f"message 1: request corrupted: sequence number 2, value "
                            f"{value:#x} (expected {message_value(1):#x})"]
    assert ctypes.sizeof(Request) == MESSAGE_BYTES


@pytest.mark.long
def test_demo_survives_the_16_bit_index_wrap(mode: list[str]) -> None:
    """70,000 messages: the guest's and the device's 16-bit ring indices wrap once."""
    messages = 70_000
    result = run_cli("demo", "--messages", str(messages), "--timeout", "3000", *mode,
                     timeout=3600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ok_line(messages) in result.stdout
