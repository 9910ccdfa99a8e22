"""The demo (``vm-memory demo``) and the split ring it runs on.

The demo runs in subprocesses, as a user runs it: with a real KVM guest where /dev/kvm
works and with a second process as the guest. Each mode must verify every message, and
each must fail (exit 1) when one request or one reply is corrupted in guest memory, so
both sides' checks are shown to bite. The ring is `vm_memory_virtio`'s (tested in
tests/virtio); here it runs in-process on the demo's layout, and a broken ring stops the
demo's device with the queue's error.
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
from host_assumptions import needs_x86_kvm_host
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
from vm_memory_virtio import (
    VIRTQ_DESC_F_NEXT,
    DriverQueue,
    Segment,
    SplitQueue,
    VirtqDesc,
    to_le16,
)

MESSAGES: Final = 300
EXCHANGE_TIMEOUT: Final = "300"
"""The demo's own ``--timeout``: generous, as a loaded machine may run it 20 times slower."""
TIMEOUT_SECONDS: Final = 600
"""The child process's: a hang guard beyond the demo's own."""


@pytest.fixture(params=[pytest.param([], id="kvm", marks=needs_x86_kvm_host),
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


# ---- The demo's ring (vm_memory_virtio's; its own tests are in tests/virtio) ----------

def ring_memory() -> GuestMemoryMmap:
    return GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x10000)])


def message(seq: int) -> tuple[list[Segment], list[Segment]]:
    """A message's chain: its request buffer (readable), then its reply buffer."""
    return ([(request_buffer(seq).raw_value(), MESSAGE_BYTES)],
            [(reply_buffer(seq).raw_value(), MESSAGE_BYTES)])


def test_ring_round_trip_across_index_wrap() -> None:
    """70,000 chains on the demo's layout: both 16-bit indices wrap; every chain comes
    back whole and in order."""
    memory = ring_memory()
    driver = DriverQueue(memory, QUEUE_LAYOUT)
    device = SplitQueue(memory, QUEUE_LAYOUT)
    batch = QUEUE_LAYOUT.size // 2
    seq = 0
    for _ in range(70_000 // batch):
        heads = [driver.add(*message(seq + index)) for index in range(batch)]
        assert driver.free_count() == 0
        for index, head in enumerate(heads):
            chain = device.pop()
            assert chain is not None and chain.head == head
            assert (chain.readable, chain.writable) == message(seq + index)
            device.add_used(chain.head, 7)
        assert device.pop() is None
        assert driver.used() == [(head, 7) for head in heads]
        assert driver.used() == []
        seq += batch
    # The ring is little-endian (virtio 1.x), the atomic load host-endian.
    used_idx = to_le16(memory.read_atomic(QUEUE_LAYOUT.used_idx, Ordering.ACQUIRE))
    assert used_idx == seq % 0x10000 and seq > 0x10000


def test_device_model_reports_a_broken_ring() -> None:
    """A looping chain stops the demo's device with the queue's error, not a crash."""
    memory = ring_memory()
    driver = DriverQueue(memory, QUEUE_LAYOUT)
    head = driver.add(*message(1))
    driver.write_descriptor(head, VirtqDesc(0x5000, 16, VIRTQ_DESC_F_NEXT, head))
    model = DeviceModel(memory, 1)
    model.serve(deadline=0.0, driver_gone=lambda: True)
    assert model.handled == 0
    assert len(model.errors) == 1 and "ring broken after 0 messages" in model.errors[0]
    assert "loop" in model.errors[0] or "chain" in model.errors[0]


def test_device_model_catches_a_skipped_sequence_number() -> None:
    """A driver that loses message 1 and sends 2 first: the device names the gap."""
    memory = ring_memory()
    driver = DriverQueue(memory, QUEUE_LAYOUT)
    value = message_value(2)
    memory.write_obj(AlignedGuestAddress.new(Request, request_buffer(2)),
                     Request(2, value, request_checksum(2, value), REQUEST_MAGIC))
    driver.add(*message(2))
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
