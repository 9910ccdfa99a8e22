"""What some tests assume of the host, said once, with the reason they skip elsewhere.

- 8-byte atomics. Most hosts do them; mips (o32) and riscv32 refuse them with
  `AtomicWidthUnsupported`, as the atomicity contract says. Tests written with 64-bit
  atomics are marked `needs_8_byte_atomics` and skip there, the library's own refusal as
  the reason; a missing libatomic is not a refusal (those tests then fail and say so).
  Tests where the width is incidental use `WIDE_ATOMIC` instead, the widest unsigned
  atomic this host does (8 bytes where it can, else 4), and so run everywhere.
- An x86 host for KVM: the KVM harness's guests are x86 code that the host's KVM runs.
  Under qemu-user (tests/ports) /dev/kvm is the x86 host's and the emulator forwards none
  of its ioctls: `needs_x86_kvm_host` skips there, whatever CI says (nothing is missing
  that a machine could install).
- pip, for the tests that build the project's wheels: the build host's tooling, which
  Debian's minimal port roots (tests/ports) leave out; the library those wheels carry is
  what the ports run (its compiled path cross-built for each).
"""

from __future__ import annotations

import ctypes
import importlib.util
import platform
from typing import Final, cast

import pytest

from vm_memory import (
    AlignedGuestAddress,
    AtomicLibraryMissing,
    AtomicWidthUnsupported,
    GuestAddress,
    GuestMemoryMmap,
)


def _refusal() -> str | None:
    memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x1000)])
    try:
        memory.read_atomic(AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(0)))
    except AtomicWidthUnsupported as error:
        return str(error)
    except AtomicLibraryMissing:
        return None
    return None


EIGHT_BYTE_REFUSAL: Final = _refusal()
"""The library's refusal of 8-byte atomics on this host, or None where they work."""

needs_8_byte_atomics: Final = pytest.mark.skipif(
    EIGHT_BYTE_REFUSAL is not None,
    reason=f"uses 8-byte atomics, which this host refuses: {EIGHT_BYTE_REFUSAL}")

WIDE_ATOMIC: Final = cast("type[ctypes.c_uint64]",
                         ctypes.c_uint64 if EIGHT_BYTE_REFUSAL is None else ctypes.c_uint32)
"""The widest unsigned atomic this host does, for tests where the width is incidental
(mips o32 and riscv32 refuse 8 bytes; every supported host does 4). Typed as c_uint64,
the widest it can be: the checkers take one atomic type (`AtomicInteger` is a constrained
TypeVar), and the values the tests store fit both."""

WIDE_ATOMIC_BYTES: Final = ctypes.sizeof(WIDE_ATOMIC)

WIDE_ATOMIC_NAME: Final = f"c_uint{8 * WIDE_ATOMIC_BYTES}"
"""Its `ctypes` name, for the child programs' preludes (`ctypes.c_uint32` or `c_uint64`)."""

WIDE_ATOMIC_PRELUDE: Final = f'''
WIDE_TYPE = ctypes.{WIDE_ATOMIC_NAME}
WIDE_BYTES = {WIDE_ATOMIC_BYTES}
WIDE_CODE = "{'Q' if WIDE_ATOMIC_BYTES == 8 else 'I'}"  # its typed-view format

def wide(address):
    """The widest atomic this host does ({WIDE_ATOMIC_NAME}), where the width is incidental."""
    return AlignedGuestAddress.new(ctypes.{WIDE_ATOMIC_NAME}, GuestAddress(address))
'''
"""`wide(address)`, `WIDE_TYPE`, `WIDE_BYTES` and `WIDE_CODE` for a child program that has
imported ctypes and vm_memory's names."""


def wide_atomic(address: int) -> AlignedGuestAddress[ctypes.c_uint64]:
    """`address` aligned for `WIDE_ATOMIC`."""
    return AlignedGuestAddress.new(WIDE_ATOMIC, GuestAddress(address))


X86_MACHINES: Final = ("x86_64", "i386", "i486", "i586", "i686")

needs_x86_kvm_host: Final = pytest.mark.skipif(
    platform.machine() not in X86_MACHINES,
    reason=f"KVM runs x86 guest code on an x86 host's KVM; this interpreter is "
           f"{platform.machine()} (under qemu-user, which forwards no KVM ioctl)")

needs_pip: Final = pytest.mark.skipif(
    importlib.util.find_spec("pip") is None,
    reason="builds the project's wheels with pip, which this interpreter does not have "
           "(a Debian port root: wheels are built and tested on the build host)")
