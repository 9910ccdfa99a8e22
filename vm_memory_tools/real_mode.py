"""A tiny assembler for hand-encoded 16-bit real-mode x86: bytes, labels and jumps.

The guest programs (`vm_memory_tools.guest_programs`, `vm_memory_tools.demo_guest`) encode
every instruction by hand, commented with its assembly; this module is what they share:
the little-endian immediates, the prefixes, and a code buffer whose jumps name a label
and are resolved once the whole program is known. A jump is short (``rel8``, two bytes)
or near (``rel16``); a short jump whose target lies out of reach is an error, never a
silently wrong displacement.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

__all__ = [
    "HLT",
    "LOCK",
    "OPERAND_SIZE_32",
    "Condition",
    "RealModeAssembler",
    "u8",
    "u16",
    "u32",
]

OPERAND_SIZE_32: Final = b"\x66"
"""In 16-bit code, this prefix selects 32-bit operands."""
LOCK: Final = b"\xf0"
HLT: Final = b"\xf4"

_SHORT_JMP: Final = 0xEB
_SHORT_JCC: Final = 0x70  # + condition code
_NEAR_JMP: Final = b"\xe9"
_NEAR_JCC: Final = b"\x0f"  # then 0x80 + condition code


class Condition(enum.IntEnum):
    """The condition codes the programs branch on (the low nibble of ``Jcc``)."""

    B = 0x2
    """Below (unsigned <): carry set."""
    AE = 0x3
    """Above or equal (unsigned >=)."""
    E = 0x4
    """Equal / zero."""
    NE = 0x5
    """Not equal / not zero."""
    BE = 0x6
    """Below or equal (unsigned <=)."""


def u8(value: int) -> bytes:
    """A one-byte immediate (unsigned)."""
    return struct.pack("<B", value)


def u16(value: int) -> bytes:
    """A two-byte little-endian immediate or displacement (unsigned)."""
    return struct.pack("<H", value)


def u32(value: int) -> bytes:
    """A four-byte little-endian immediate (unsigned)."""
    return struct.pack("<I", value)


class RealModeAssembler:
    """Code bytes with labels; jumps to labels are resolved by `assemble`."""

    def __init__(self) -> None:
        self._code = bytearray()
        self._labels: dict[str, int] = {}
        self._jumps: list[tuple[int, int, str]] = []  # (displacement offset, its size, label)

    def emit(self, *chunks: bytes) -> None:
        """Append instruction bytes."""
        for chunk in chunks:
            self._code += chunk

    def label(self, name: str) -> None:
        """Name the next instruction's address (once per program)."""
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._code)

    def jump(self, target: str, condition: Condition | None = None, *,
             near: bool = False) -> None:
        """``jmp``, or ``j<condition>``, to ``target``: short (rel8) unless ``near``
        (rel16, for targets more than 127 bytes away)."""
        if near:
            opcode = _NEAR_JMP if condition is None else _NEAR_JCC + u8(0x80 + condition)
            size = 2
        else:
            opcode = u8(_SHORT_JMP if condition is None else _SHORT_JCC + condition)
            size = 1
        self._code += opcode + bytes(size)
        self._jumps.append((len(self._code) - size, size, target))

    def assemble(self) -> bytes:
        """The program, every jump resolved."""
        code = bytearray(self._code)
        for offset, size, target in self._jumps:
            if target not in self._labels:
                raise ValueError(f"jump to undefined label {target!r}")
            displacement = self._labels[target] - (offset + size)
            limit = 1 << (8 * size - 1)
            if not -limit <= displacement < limit:
                raise ValueError(f"{'near' if size == 2 else 'short'} jump to {target!r} "
                                 f"out of range: {displacement}")
            code[offset:offset + size] = displacement.to_bytes(size, "little", signed=True)
        return bytes(code)
