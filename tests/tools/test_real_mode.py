"""The real-mode assembler the guest programs share: encodings, labels and jump reach."""

from __future__ import annotations

import struct

import pytest

from vm_memory_tools.real_mode import HLT, Condition, RealModeAssembler, u8, u16, u32


def test_short_jumps_resolve_backwards_and_forwards() -> None:
    code = RealModeAssembler()
    code.label("top")
    code.emit(b"\x90")  # nop
    code.jump("top", Condition.NE)  # jnz top: rel8 = 0 - 3
    code.jump("end", Condition.E)  # jz end: rel8 = 6 - 5
    code.jump("top")  # jmp top: rel8 = 0 - 7
    code.label("end")
    code.emit(HLT)
    assert code.assemble() == bytes([0x90, 0x75, 0xFD, 0x74, 0x02, 0xEB, 0xF9, 0xF4])


def test_near_jumps_use_the_two_byte_opcodes_and_rel16() -> None:
    code = RealModeAssembler()
    code.jump("far", Condition.B, near=True)  # jb far: 0f 82 rel16
    code.jump("far", near=True)  # jmp far: e9 rel16
    code.emit(bytes(300))
    code.label("far")
    assert code.assemble()[:7] == b"\x0f\x82" + (303).to_bytes(2, "little") + \
        b"\xe9" + (300).to_bytes(2, "little")


def test_every_condition_has_its_opcode() -> None:
    for condition, short, near in [(Condition.B, 0x72, 0x82), (Condition.AE, 0x73, 0x83),
                                   (Condition.E, 0x74, 0x84), (Condition.NE, 0x75, 0x85),
                                   (Condition.BE, 0x76, 0x86)]:
        code = RealModeAssembler()
        code.label("here")
        code.jump("here", condition)
        code.jump("here", condition, near=True)
        assert code.assemble() == bytes([short, 0xFE, 0x0F, near, 0xFA, 0xFF])


def test_a_short_jump_out_of_reach_is_refused() -> None:
    def forward(distance: int) -> bytes:
        code = RealModeAssembler()
        code.jump("far")
        code.emit(bytes(distance))
        code.label("far")
        return code.assemble()

    assert forward(127)[:2] == b"\xeb\x7f"  # the farthest a short jump reaches
    with pytest.raises(ValueError, match="short jump to 'far' out of range: 128"):
        forward(128)


def test_labels_are_defined_once_and_jumps_need_one() -> None:
    code = RealModeAssembler()
    code.label("twice")
    with pytest.raises(ValueError, match="label 'twice' defined twice"):
        code.label("twice")
    code.jump("nowhere")
    with pytest.raises(ValueError, match="undefined label 'nowhere'"):
        code.assemble()


def test_immediates_are_little_endian_and_range_checked() -> None:
    assert (u8(0xAB), u16(0x1234), u32(0xDEADBEEF)) == (b"\xab", b"\x34\x12", b"\xef\xbe\xad\xde")
    for encode, too_big in ((u8, 0x100), (u16, 0x1_0000), (u32, 0x1_0000_0000)):
        with pytest.raises(struct.error):
            encode(too_big)
