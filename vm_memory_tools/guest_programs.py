"""Hand-assembled 16-bit real-mode x86 guest programs for the KVM tests, built as ``bytes``.

The test suite runs them on a vCPU of the KVM harness (`vm_memory_tools.kvm`): a guest
that stores a value, talks to an I/O port, hammers a counter with locked
read-modify-writes, or rewrites a location as fast as it can. (The demo's guest driver
is in `vm_memory_tools.demo_guest`.) Each instruction is encoded by hand and commented
with its assembly; `vm_memory_tools.real_mode` resolves the labels and jumps.

Conventions shared by every builder:

- The code is position independent (only relative jumps): load it anywhere below
  1 MiB and start it with ``KvmVcpu.set_real_mode(entry)``.
- Data addresses are guest-physical and below 1 MiB. The program loads
  ``DS = address >> 4`` and uses the offset ``address & 0xF``, so any such address
  is reachable without 32-bit addressing (which real mode limits to 64 KiB anyway).
- Data addresses must be naturally aligned for the access width: a locked access
  that splits a cache line is a bus lock, which the host kernel may trap or punish.
- Loop counts are 32-bit (``esi`` counts down); 0 runs no iteration.
- Every program ends with ``hlt``, which `KvmVcpu.run_until_halt` waits for.
"""

from __future__ import annotations

from typing import Final

from vm_memory_tools.real_mode import (
    HLT,
    LOCK,
    OPERAND_SIZE_32,
    Condition,
    RealModeAssembler,
    u8,
    u16,
    u32,
)

__all__ = [
    "NOTIFY_VALUE",
    "alternating_store_loop",
    "increment_loop",
    "jump_to",
    "port_in_store_and_halt",
    "port_out_and_halt",
    "spin_forever",
    "store_and_halt",
    "xadd_loop",
]

_REAL_MODE_LIMIT: Final = 0x10_0000
#: The byte a program with a ``notify_port`` writes to that port when its loop is done.
NOTIFY_VALUE: Final = 0x01

def _check_range(name: str, value: int, bits: int) -> None:
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{name} {value!r} does not fit in {bits} unsigned bits")


def _check_data_address(address: int, width: int) -> None:
    if not 0 <= address <= _REAL_MODE_LIMIT - width:
        raise ValueError(f"data address {address:#x} is not below 1 MiB")
    if address % width:
        raise ValueError(f"data address {address:#x} is not aligned to its width {width}")


def _check_width(width: int, allowed: tuple[int, ...]) -> None:
    if width not in allowed:
        raise ValueError(f"width {width} is not one of {allowed}")


def _load_data_segment(code: RealModeAssembler, address: int) -> bytes:
    """Point DS at ``address``'s paragraph; return the 16-bit displacement to use."""
    code.emit(b"\xb8", u16(address >> 4))  # mov ax, address >> 4
    code.emit(b"\x8e\xd8")  # mov ds, ax
    return u16(address & 0xF)


def _start_loop(code: RealModeAssembler, count: int) -> None:
    """``esi = count``; skip to ``done`` when it is 0; label the loop ``top``."""
    _check_range("count", count, 32)
    code.emit(OPERAND_SIZE_32, b"\xbe", u32(count))  # mov esi, count
    code.emit(OPERAND_SIZE_32, b"\x85\xf6")  # test esi, esi
    code.jump("done", Condition.E)  # jz done
    code.label("top")


def _end_loop(code: RealModeAssembler, notify_port: int | None) -> bytes:
    """Close the loop opened by `_start_loop`, notify, halt, and assemble."""
    code.emit(OPERAND_SIZE_32, b"\x4e")  # dec esi
    code.jump("top", Condition.NE)  # jnz top
    code.label("done")
    if notify_port is not None:
        _check_range("notify_port", notify_port, 16)
        code.emit(b"\xba", u16(notify_port))  # mov dx, notify_port
        code.emit(b"\xb0", u8(NOTIFY_VALUE))  # mov al, NOTIFY_VALUE
        code.emit(b"\xee")  # out dx, al
    code.emit(HLT)  # hlt
    return code.assemble()


def increment_loop(
    counter_address: int,
    count: int,
    *,
    locked: bool,
    width: int = 4,
    notify_port: int | None = None,
) -> bytes:
    """Add 1 to the ``width``-byte little-endian counter ``count`` times, then halt.

    ``locked=True`` makes every increment one atomic read-modify-write: ``lock inc``
    for widths 1, 2 and 4; for width 8 (no 64-bit registers in real mode) a
    ``lock cmpxchg8b`` retry loop, which is atomic on all eight bytes. ``locked=False``
    uses plain ``inc`` (width 8: ``add`` low half, ``adc`` high half), which loses
    updates when another CPU writes the counter at the same time. With
    ``notify_port``, the guest writes `NOTIFY_VALUE` there before halting.
    """
    _check_width(width, (1, 2, 4, 8))
    _check_data_address(counter_address, width)
    code = RealModeAssembler()
    displacement = _load_data_segment(code, counter_address)
    lock = LOCK if locked else b""
    if width == 8 and locked:
        # edx:eax holds the value we believe is in memory; cmpxchg8b corrects it.
        code.emit(OPERAND_SIZE_32, b"\x8b\x06", displacement)  # mov eax, [counter]
        code.emit(OPERAND_SIZE_32, b"\x8b\x16", u16((counter_address & 0xF) + 4))
        #                                                     mov edx, [counter + 4]
        _start_loop(code, count)
        code.label("retry")
        code.emit(OPERAND_SIZE_32, b"\x89\xc3")  # mov ebx, eax
        code.emit(OPERAND_SIZE_32, b"\x89\xd1")  # mov ecx, edx
        code.emit(OPERAND_SIZE_32, b"\x83\xc3\x01")  # add ebx, 1
        code.emit(OPERAND_SIZE_32, b"\x83\xd1\x00")  # adc ecx, 0
        code.emit(LOCK, b"\x0f\xc7\x0e", displacement)  # lock cmpxchg8b [counter]
        code.jump("retry", Condition.NE)  # jnz retry (edx:eax now holds the current value)
        code.emit(OPERAND_SIZE_32, b"\x89\xd8")  # mov eax, ebx
        code.emit(OPERAND_SIZE_32, b"\x89\xca")  # mov edx, ecx
    elif width == 8:
        high = u16((counter_address & 0xF) + 4)
        _start_loop(code, count)
        code.emit(OPERAND_SIZE_32, b"\x83\x06", displacement, b"\x01")  # add dword [lo], 1
        code.emit(OPERAND_SIZE_32, b"\x83\x16", high, b"\x00")  # adc dword [hi], 0
    else:
        _start_loop(code, count)
        if width == 1:
            code.emit(lock, b"\xfe\x06", displacement)  # [lock] inc byte [counter]
        elif width == 2:
            code.emit(lock, b"\xff\x06", displacement)  # [lock] inc word [counter]
        else:
            code.emit(lock, OPERAND_SIZE_32, b"\xff\x06", displacement)
            #                                            [lock] inc dword [counter]
    return _end_loop(code, notify_port)


def xadd_loop(
    counter_address: int,
    count: int,
    *,
    addend: int = 1,
    locked: bool = True,
    width: int = 4,
    notify_port: int | None = None,
) -> bytes:
    """Do ``[lock] xadd [counter], addend`` ``count`` times, then halt.

    The counter ends ``count * addend`` higher (modulo ``2**(8*width)``) when every
    other writer is atomic too. Widths 1, 2, 4 (``xadd`` has no 8-byte form in real
    mode; use `increment_loop` with width 8 for a 64-bit atomic counter).
    """
    _check_width(width, (1, 2, 4))
    _check_data_address(counter_address, width)
    _check_range("addend", addend, 8 * width)
    code = RealModeAssembler()
    displacement = _load_data_segment(code, counter_address)
    lock = LOCK if locked else b""
    _start_loop(code, count)
    # xadd leaves the old value in the register, so reload the addend every time.
    if width == 1:
        code.emit(b"\xb0", u8(addend))  # mov al, addend
        code.emit(lock, b"\x0f\xc0\x06", displacement)  # [lock] xadd [counter], al
    elif width == 2:
        code.emit(b"\xb8", u16(addend))  # mov ax, addend
        code.emit(lock, b"\x0f\xc1\x06", displacement)  # [lock] xadd [counter], ax
    else:
        code.emit(OPERAND_SIZE_32, b"\xb8", u32(addend))  # mov eax, addend
        code.emit(lock, OPERAND_SIZE_32, b"\x0f\xc1\x06", displacement)
        #                                           [lock] xadd [counter], eax
    return _end_loop(code, notify_port)


def alternating_store_loop(
    address: int, count: int, values: tuple[int, int], *, width: int = 8
) -> bytes:
    """Store ``values[0]`` then ``values[1]`` at ``address``, ``count`` times; halt.

    A writer for torn-read tests. Every store is one locked, naturally aligned
    instruction of ``width`` bytes (``xchg``, which locks implicitly; for width 8 a
    ``lock cmpxchg8b`` loop), so each is a single atomic write — also when KVM
    emulates the guest instead of running it on the CPU: its emulator performs locked
    instructions with one host atomic but may copy a plain ``mov`` byte by byte. A
    reader that ever sees a value other than the two was itself not atomic. The
    location ends holding ``values[1]`` (when ``count`` > 0).
    """
    _check_width(width, (1, 2, 4, 8))
    _check_data_address(address, width)
    for value in values:
        _check_range("value", value, 8 * width)
    first, second = values
    code = RealModeAssembler()
    displacement = _load_data_segment(code, address)
    if width == 8:
        # edx:eax = our guess of the current value; cmpxchg8b corrects a wrong guess.
        code.emit(OPERAND_SIZE_32, b"\x8b\x06", displacement)  # mov eax, [address]
        code.emit(OPERAND_SIZE_32, b"\x8b\x16", u16((address & 0xF) + 4))
        #                                                     mov edx, [address + 4]
        _start_loop(code, count)
        for index, value in enumerate(values):
            code.emit(OPERAND_SIZE_32, b"\xbb", u32(value & 0xFFFF_FFFF))  # mov ebx, low
            code.emit(OPERAND_SIZE_32, b"\xb9", u32(value >> 32))  # mov ecx, high
            code.label(f"store{index}")
            code.emit(LOCK, b"\x0f\xc7\x0e", displacement)  # lock cmpxchg8b [address]
            code.jump(f"store{index}", Condition.NE)  # jnz store
            #                                  (edx:eax now holds the current value)
            code.emit(OPERAND_SIZE_32, b"\x89\xd8")  # mov eax, ebx
            code.emit(OPERAND_SIZE_32, b"\x89\xca")  # mov edx, ecx
        return _end_loop(code, None)
    _start_loop(code, count)
    # xchg overwrites its register with the old value: reload before each store.
    for value in (first, second):
        if width == 1:
            code.emit(b"\xb0", u8(value))  # mov al, value
            code.emit(b"\x86\x06", displacement)  # xchg [address], al
        elif width == 2:
            code.emit(b"\xb8", u16(value))  # mov ax, value
            code.emit(b"\x87\x06", displacement)  # xchg [address], ax
        else:
            code.emit(OPERAND_SIZE_32, b"\xb8", u32(value))  # mov eax, value
            code.emit(OPERAND_SIZE_32, b"\x87\x06", displacement)  # xchg [address], eax
    return _end_loop(code, None)


def store_and_halt(address: int, value: int, *, width: int = 4) -> bytes:
    """Write ``value`` (``width`` bytes, little-endian, one store) at ``address``; halt."""
    _check_width(width, (1, 2, 4))
    _check_data_address(address, width)
    _check_range("value", value, 8 * width)
    code = RealModeAssembler()
    displacement = _load_data_segment(code, address)
    if width == 1:
        code.emit(b"\xc6\x06", displacement, u8(value))  # mov byte [address], value
    elif width == 2:
        code.emit(b"\xc7\x06", displacement, u16(value))  # mov word [address], value
    else:
        code.emit(OPERAND_SIZE_32, b"\xc7\x06", displacement, u32(value))
        #                                                  mov dword [address], value
    code.emit(HLT)  # hlt
    return code.assemble()


def port_out_and_halt(port: int, value: int, *, width: int = 1) -> bytes:
    """Write ``value`` (``width`` bytes) to I/O ``port`` with one ``out``; halt."""
    _check_width(width, (1, 2, 4))
    _check_range("port", port, 16)
    _check_range("value", value, 8 * width)
    code = RealModeAssembler()
    code.emit(b"\xba", u16(port))  # mov dx, port
    if width == 1:
        code.emit(b"\xb0", u8(value))  # mov al, value
        code.emit(b"\xee")  # out dx, al
    elif width == 2:
        code.emit(b"\xb8", u16(value))  # mov ax, value
        code.emit(b"\xef")  # out dx, ax
    else:
        code.emit(OPERAND_SIZE_32, b"\xb8", u32(value))  # mov eax, value
        code.emit(OPERAND_SIZE_32, b"\xef")  # out dx, eax
    code.emit(HLT)  # hlt
    return code.assemble()


def port_in_store_and_halt(port: int, address: int, *, width: int = 1) -> bytes:
    """Read ``width`` bytes from I/O ``port`` with one ``in``, store them at ``address``;
    halt. The host's exit handler supplies the bytes."""
    _check_width(width, (1, 2, 4))
    _check_range("port", port, 16)
    _check_data_address(address, width)
    code = RealModeAssembler()
    displacement = _load_data_segment(code, address)
    code.emit(b"\xba", u16(port))  # mov dx, port
    if width == 1:
        code.emit(b"\xec")  # in al, dx
        code.emit(b"\xa2", displacement)  # mov [address], al
    elif width == 2:
        code.emit(b"\xed")  # in ax, dx
        code.emit(b"\xa3", displacement)  # mov [address], ax
    else:
        code.emit(OPERAND_SIZE_32, b"\xed")  # in eax, dx
        code.emit(OPERAND_SIZE_32, b"\xa3", displacement)  # mov [address], eax
    code.emit(HLT)  # hlt
    return code.assemble()


def jump_to(address: int) -> bytes:
    """Far-jump to guest-physical ``address`` (below 1 MiB + 64 KiB - 16).

    For failure tests: aim it at memory no slot backs, or at garbage.
    """
    segment = min(address >> 4, 0xFFFF)
    offset = address - (segment << 4)
    if not 0 <= offset <= 0xFFFF:
        raise ValueError(f"address {address:#x} is not reachable from real mode")
    return b"\xea" + u16(offset) + u16(segment)  # jmp far segment:offset


def spin_forever() -> bytes:
    """An endless loop that never exits to the host (for timeout tests)."""
    return b"\xeb\xfe"  # jmp $
