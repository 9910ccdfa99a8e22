"""The demo's message protocol and its guest driver, hand-encoded 16-bit real-mode x86.

Both sides of the demo agree on what is here: where the queue and the buffers live in
guest memory, what a request and a reply hold, and how a message is checked. The guest
program `ring_driver_program` is the driver of a virtio-style split ring
(`vm_memory_virtio`'s layout): for each sequence number it fills a request, chains a reply
buffer behind it, publishes the chain on the available ring, collects replies from the
used ring and checks each one; then it reports on an I/O port and halts. No assembler
is needed: every instruction is encoded by hand and commented with its assembly, and
`vm_memory_tools.real_mode` resolves the labels and jumps.

Atomicity from inside the guest. The guest publishes the available index with ``xchg``
(locked, a full barrier) and reads the used index with ``lock xadd reg(0)`` (an atomic
read that writes back the value it read, so a concurrent device store is never lost):
when KVM has to emulate the guest (no hardware virtualisation) its emulator may copy a
plain ``mov`` byte by byte, but performs a locked instruction with one host atomic.
Buffers and descriptors are plain stores; the index publication orders them.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, ClassVar, Final

from vm_memory.address import GuestAddress
from vm_memory.endian import Le32
from vm_memory_tools.real_mode import OPERAND_SIZE_32, Condition, RealModeAssembler, u8, u16, u32
from vm_memory_virtio import QueueLayout

__all__ = [
    "CODE_ADDRESS",
    "DONE_PORT",
    "DONE_VALUE",
    "MEMORY_SIZE",
    "MESSAGE_BYTES",
    "QUEUE_LAYOUT",
    "QUEUE_SIZE",
    "REPLY_BUFFERS",
    "REPLY_MAGIC",
    "REQUEST_BUFFERS",
    "REQUEST_MAGIC",
    "SLOTS",
    "STATUS_ADDRESS",
    "GuestStatus",
    "Reply",
    "Request",
    "message_value",
    "reply_buffer",
    "reply_result",
    "request_buffer",
    "request_checksum",
    "ring_driver_program",
]

# ---- The guest-physical memory map (all below 64 KiB: DS = 0 reaches it) -----------
MEMORY_SIZE: Final = 0x10_0000
"""1 MiB of guest RAM (the real-mode address space)."""
CODE_ADDRESS: Final = 0x1000
QUEUE_SIZE: Final = 32
"""Descriptor-table and ring entries; every message is a two-descriptor chain."""
SLOTS: Final = QUEUE_SIZE // 2
"""Messages in flight at most (each slot owns one request and one reply buffer)."""
QUEUE_LAYOUT: Final = QueueLayout(QUEUE_SIZE, GuestAddress(0x2000), GuestAddress(0x3000),
                                  GuestAddress(0x4000))
REQUEST_BUFFERS: Final = 0x5000
REPLY_BUFFERS: Final = 0x6000
STATUS_ADDRESS: Final = 0x7000
"""Where the guest keeps its counters (`GuestStatus`); the host reads them after halt."""
MESSAGE_BYTES: Final = 16
DONE_PORT: Final = 0x0510
DONE_VALUE: Final = 0x01

# ---- The messages ---------------------------------------------------------------
_U32: Final = 0xFFFF_FFFF
_VALUE_MULTIPLIER: Final = 0x9E37_79B1  # Knuth's multiplicative hash constant
_CHECKSUM_XOR: Final = 0xA5A5_A5A5
REQUEST_MAGIC: Final = 0x5152_4D56  # "VMRQ" little-endian
REPLY_MAGIC: Final = 0x5052_4D56  # "VMRP"


class Request(ctypes.Structure):
    """What the driver sends: a sequence number, a value derived from it, a checksum."""

    _fields_: ClassVar = [("seq", Le32), ("value", Le32), ("checksum", Le32), ("magic", Le32)]
    if TYPE_CHECKING:
        seq: int
        value: int
        checksum: int
        magic: int


class Reply(ctypes.Structure):
    """What the device answers: the sequence number, ~value, a status (0 = verified)."""

    _fields_: ClassVar = [("seq", Le32), ("result", Le32), ("status", Le32), ("magic", Le32)]
    if TYPE_CHECKING:
        seq: int
        result: int
        status: int
        magic: int


class GuestStatus(ctypes.Structure):
    """The guest driver's counters at `STATUS_ADDRESS`."""

    _fields_: ClassVar = [("reaped", Le32), ("verified", Le32), ("bad", Le32),
                          ("first_bad", Le32), ("sent", Le32)]
    if TYPE_CHECKING:
        reaped: int
        verified: int
        bad: int
        first_bad: int
        sent: int


assert ctypes.sizeof(Request) == ctypes.sizeof(Reply) == MESSAGE_BYTES


def message_value(seq: int) -> int:
    """The value message ``seq`` carries."""
    return (seq * _VALUE_MULTIPLIER) & _U32


def request_checksum(seq: int, value: int) -> int:
    """The checksum of a request."""
    return ((value + seq) & _U32) ^ _CHECKSUM_XOR


def reply_result(value: int) -> int:
    """What the device answers for a request carrying ``value``."""
    return ~value & _U32


def request_buffer(seq: int) -> GuestAddress:
    """The request buffer message ``seq`` uses (its slot's)."""
    return GuestAddress(REQUEST_BUFFERS + MESSAGE_BYTES * (seq % SLOTS))


def reply_buffer(seq: int) -> GuestAddress:
    """The reply buffer message ``seq`` uses."""
    return GuestAddress(REPLY_BUFFERS + MESSAGE_BYTES * (seq % SLOTS))


_STATUS_REAPED: Final = STATUS_ADDRESS + 0
_STATUS_VERIFIED: Final = STATUS_ADDRESS + 4
_STATUS_BAD: Final = STATUS_ADDRESS + 8
_STATUS_FIRST_BAD: Final = STATUS_ADDRESS + 12
_STATUS_SENT: Final = STATUS_ADDRESS + 16
assert [getattr(GuestStatus, name).offset
        for name in ("reaped", "verified", "bad", "first_bad", "sent")] == [0, 4, 8, 12, 16]

_O32: Final = OPERAND_SIZE_32  # nearly every instruction below has 32-bit operands


def ring_driver_program(count: int) -> bytes:
    """The guest driver: send messages 1..``count`` through `QUEUE_LAYOUT`, check replies.

    Load it at `CODE_ADDRESS` in zeroed memory and start it in real mode. Slot ``s``
    owns descriptors ``2s`` (request, device-readable, NEXT) and ``2s+1`` (reply,
    device-writable); message ``seq`` uses slot ``seq % SLOTS``, so at most `SLOTS`
    messages are in flight. The device must complete chains in order: the guest
    checks that used entry ``k`` is message ``k``'s head and that its reply holds
    ``seq`` and ``reply_result(value)``. Counters go to `GuestStatus` at
    `STATUS_ADDRESS`; at the end the guest writes `DONE_VALUE` to `DONE_PORT` and halts.

    Registers: ``ecx`` = next sequence number, ``bp`` = the available index it
    published last; ``bx``/``di``/``si`` address ring entries and buffers.
    """
    if not 0 <= count < 1 << 31:
        raise ValueError(f"message count {count} does not fit the guest's counters")
    code = RealModeAssembler()
    _emit_descriptor_table(code)
    code.emit(_O32, b"\xb9", u32(1))  # mov ecx, 1                (first sequence number)
    code.emit(b"\x31\xed")  # xor bp, bp                            (available index)
    _emit_reap(code)
    _emit_send(code, count)
    # -- Everything sent and answered: report and halt.
    code.label("finish")
    code.emit(_O32, b"\x49")  # dec ecx
    code.emit(_O32, b"\x89\x0e", u16(_STATUS_SENT))  # mov [sent], ecx
    code.emit(b"\xba", u16(DONE_PORT))  # mov dx, DONE_PORT
    code.emit(b"\xb0", u8(DONE_VALUE))  # mov al, DONE_VALUE
    code.emit(b"\xee")  # out dx, al
    code.emit(b"\xf4")  # hlt
    return code.assemble()


_DESC: Final = QUEUE_LAYOUT.desc_table.raw_value()
_AVAIL_IDX: Final = QUEUE_LAYOUT.avail_ring.raw_value() + 2
_AVAIL_RING: Final = QUEUE_LAYOUT.avail_ring.raw_value() + 4
_USED_IDX: Final = QUEUE_LAYOUT.used_ring.raw_value() + 2
_USED_RING: Final = QUEUE_LAYOUT.used_ring.raw_value() + 4


def _emit_descriptor_table(code: RealModeAssembler) -> None:
    """The descriptor table: two descriptors per slot, written once. bx = slot."""
    desc = _DESC
    code.emit(b"\x31\xdb")  # xor bx, bx
    code.label("init")
    code.emit(b"\x89\xdf")  # mov di, bx
    code.emit(b"\xc1\xe7\x05")  # shl di, 5                 (di = 32 * slot: two descriptors)
    code.emit(b"\x89\xde")  # mov si, bx
    code.emit(b"\xc1\xe6\x04")  # shl si, 4                 (si = 16 * slot: one buffer)
    code.emit(_O32, b"\x31\xc0")  # xor eax, eax
    code.emit(b"\x8d\x84", u16(REQUEST_BUFFERS))  # lea ax, [si + REQUEST_BUFFERS]
    code.emit(_O32, b"\x89\x85", u16(desc))  # mov [di + desc].addr_lo, eax
    code.emit(_O32, b"\xc7\x85", u16(desc + 4), u32(0))  # mov dword [di + desc].addr_hi, 0
    code.emit(_O32, b"\xc7\x85", u16(desc + 8), u32(MESSAGE_BYTES))  # mov [..].len, 16
    code.emit(b"\xc7\x85", u16(desc + 12), u16(1))  # mov word [di + desc].flags, NEXT
    code.emit(b"\x89\xd8")  # mov ax, bx
    code.emit(b"\xd1\xe0")  # shl ax, 1
    code.emit(b"\x40")  # inc ax                                  (ax = 2 * slot + 1)
    code.emit(b"\x89\x85", u16(desc + 14))  # mov [di + desc].next, ax
    code.emit(b"\x8d\x84", u16(REPLY_BUFFERS))  # lea ax, [si + REPLY_BUFFERS]
    code.emit(_O32, b"\x89\x85", u16(desc + 16))  # mov [di + desc + 16].addr_lo, eax
    code.emit(_O32, b"\xc7\x85", u16(desc + 20), u32(0))  # mov dword [..].addr_hi, 0
    code.emit(_O32, b"\xc7\x85", u16(desc + 24), u32(MESSAGE_BYTES))  # mov [..].len, 16
    code.emit(_O32, b"\xc7\x85", u16(desc + 28), u32(2))  # mov [..].flags|next, WRITE | 0
    code.emit(b"\x43")  # inc bx
    code.emit(b"\x83\xfb", u8(SLOTS))  # cmp bx, SLOTS
    code.jump("init", Condition.B, near=True)  # jb init


def _emit_reap(code: RealModeAssembler) -> None:
    """Collect every finished chain, in order, and check its reply."""
    used_idx, used_ring = _USED_IDX, _USED_RING
    code.label("reap")
    code.emit(b"\x31\xc0")  # xor ax, ax
    code.emit(b"\xf0\x0f\xc1\x06", u16(used_idx))  # lock xadd [used.idx], ax  (atomic read)
    code.emit(b"\x3b\x06", u16(_STATUS_REAPED))  # cmp ax, [reaped]     (low 16 bits)
    code.jump("send_check", Condition.E, near=True)  # je send_check  (nothing new)
    code.emit(b"\x8b\x1e", u16(_STATUS_REAPED))  # mov bx, [reaped]
    code.emit(b"\x83\xe3", u8(QUEUE_SIZE - 1))  # and bx, QUEUE_SIZE - 1
    code.emit(b"\xc1\xe3\x03")  # shl bx, 3                          (8-byte used entries)
    code.emit(_O32, b"\x8b\x87", u16(used_ring))  # mov eax, [bx + used.ring].id
    code.emit(_O32, b"\x8b\x16", u16(_STATUS_REAPED))  # mov edx, [reaped]
    code.emit(_O32, b"\x42")  # inc edx                           (edx = expected seq)
    code.emit(b"\x89\xd3")  # mov bx, dx
    code.emit(b"\x83\xe3", u8(SLOTS - 1))  # and bx, SLOTS - 1        (its slot)
    code.emit(_O32, b"\x0f\xb7\xfb")  # movzx edi, bx
    code.emit(_O32, b"\xd1\xe7")  # shl edi, 1                      (its head: 2 * slot)
    code.emit(_O32, b"\x39\xf8")  # cmp eax, edi
    code.jump("bad", Condition.NE, near=True)  # jne bad
    code.emit(b"\xc1\xe3\x04")  # shl bx, 4                          (16 * slot)
    code.emit(_O32, b"\x39\x97", u16(REPLY_BUFFERS))  # cmp [bx + replies].seq, edx
    code.jump("bad", Condition.NE, near=True)  # jne bad
    code.emit(_O32, b"\x69\xc2", u32(_VALUE_MULTIPLIER))  # imul eax, edx, MULTIPLIER
    code.emit(_O32, b"\xf7\xd0")  # not eax
    code.emit(_O32, b"\x39\x87", u16(REPLY_BUFFERS + 4))  # cmp [bx + replies].result, eax
    code.jump("bad", Condition.NE, near=True)  # jne bad
    code.emit(_O32, b"\xff\x06", u16(_STATUS_VERIFIED))  # inc dword [verified]
    code.jump("reaped", near=True)  # jmp reaped
    code.label("bad")
    code.emit(_O32, b"\xff\x06", u16(_STATUS_BAD))  # inc dword [bad]
    code.emit(_O32, b"\x83\x3e", u16(_STATUS_FIRST_BAD), b"\x00")  # cmp dword [first_bad], 0
    code.jump("reaped", Condition.NE, near=True)  # jne reaped
    code.emit(_O32, b"\x89\x16", u16(_STATUS_FIRST_BAD))  # mov [first_bad], edx
    code.label("reaped")
    code.emit(_O32, b"\xff\x06", u16(_STATUS_REAPED))  # inc dword [reaped]
    code.jump("reap", near=True)  # jmp reap


def _emit_send(code: RealModeAssembler, count: int) -> None:
    """Send the next message if any is left and a slot is free; else go to finish."""
    avail_idx, avail_ring = _AVAIL_IDX, _AVAIL_RING
    code.label("send_check")
    code.emit(_O32, b"\x81\xf9", u32(count))  # cmp ecx, count
    code.jump("may_send", Condition.BE, near=True)  # jbe may_send
    code.emit(_O32, b"\x81\x3e", u16(_STATUS_REAPED), u32(count))  # cmp dword [reaped], count
    code.jump("reap", Condition.NE, near=True)  # jne reap  (replies still due)
    code.jump("finish", near=True)  # jmp finish
    code.label("may_send")
    code.emit(b"\x89\xe8")  # mov ax, bp
    code.emit(b"\x2b\x06", u16(_STATUS_REAPED))  # sub ax, [reaped]     (messages in flight)
    code.emit(b"\x83\xf8", u8(SLOTS))  # cmp ax, SLOTS
    code.jump("reap", Condition.AE, near=True)  # jae reap  (all slots busy)
    code.emit(b"\x89\xcb")  # mov bx, cx
    code.emit(b"\x83\xe3", u8(SLOTS - 1))  # and bx, SLOTS - 1          (slot)
    code.emit(b"\x89\xdf")  # mov di, bx
    code.emit(b"\xc1\xe3\x04")  # shl bx, 4
    code.emit(_O32, b"\x89\x8f", u16(REQUEST_BUFFERS))  # mov [bx + requests].seq, ecx
    code.emit(_O32, b"\x69\xc1", u32(_VALUE_MULTIPLIER))  # imul eax, ecx, MULTIPLIER
    code.emit(_O32, b"\x89\x87", u16(REQUEST_BUFFERS + 4))  # mov [bx + requests].value, eax
    code.emit(_O32, b"\x01\xc8")  # add eax, ecx
    code.emit(_O32, b"\x35", u32(_CHECKSUM_XOR))  # xor eax, CHECKSUM_XOR
    code.emit(_O32, b"\x89\x87", u16(REQUEST_BUFFERS + 8))  # mov [..].checksum, eax
    code.emit(_O32, b"\xc7\x87", u16(REQUEST_BUFFERS + 12), u32(REQUEST_MAGIC))
    #                                                 mov dword [bx + requests].magic, MAGIC
    code.emit(b"\x89\xe8")  # mov ax, bp
    code.emit(b"\x83\xe0", u8(QUEUE_SIZE - 1))  # and ax, QUEUE_SIZE - 1
    code.emit(b"\x89\xc3")  # mov bx, ax
    code.emit(b"\xd1\xe3")  # shl bx, 1                               (2-byte ring entries)
    code.emit(b"\xd1\xe7")  # shl di, 1                               (head = 2 * slot)
    code.emit(b"\x89\xbf", u16(avail_ring))  # mov [bx + avail.ring], di
    code.emit(b"\x45")  # inc bp
    code.emit(b"\x89\xe8")  # mov ax, bp
    code.emit(b"\x87\x06", u16(avail_idx))  # xchg [avail.idx], ax   (locked: publishes)
    code.emit(_O32, b"\x41")  # inc ecx
    code.jump("reap", near=True)  # jmp reap
