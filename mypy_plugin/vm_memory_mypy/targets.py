# ruff: noqa: E501 -- the table of targets below is kept one row a line
"""Target architectures: the data model and the widest lock-free atomic access of each.

The plugin checks code for the configured target, not for the machine running mypy:
`c_ulong` is 8 bytes on LP64 but 4 on LLP64 and ILP32, and a 64-bit atomic is a single
instruction on x86_64 but impossible on riscv32.

| target | data model | pointer | atomic width | long double (size/align) | where the figures come from |
|---|---|---|---|---|---|
| x86_64 | LP64 (LLP64 on Windows) | 8 | 8 | 16/16 (8/8 on Windows) | SysV AMD64 psABI §3.1.2; GCC `__GCC_ATOMIC_LLONG_LOCK_FREE` = 2; 16 bytes needs cmpxchg16b, which libatomic does not report lock-free (measured, see NOTES) |
| aarch64 | LP64 (LLP64 on Windows) | 8 | 8 | 16/16 (8/8 on macOS and Windows) | AAPCS64 §5.1; GCC `__GCC_ATOMIC_LLONG_LOCK_FREE` = 2 (LDXR/STXR, LSE CAS) |
| i686 | ILP32 | 4 | 8 | 12/4 (8/8 on Windows) | i386 SysV psABI (64-bit scalars 4-aligned in structures); GCC `__GCC_ATOMIC_LLONG_LOCK_FREE` = 2 from `-march=i586` (cmpxchg8b) |
| armv7 | ILP32 | 4 | 8 | 8/8 | AAPCS §4.1 (64-bit scalars 8-aligned); ARMv7-A LDREXD/STREXD: GCC `__GCC_ATOMIC_LLONG_LOCK_FREE` = 2 |
| riscv64 | LP64 | 8 | 8 | 16/16 | RISC-V psABI (LP64D); the A extension has 64-bit AMOs and LR/SC on RV64 |
| riscv32 | ILP32 | 4 | 4 | 16/16 | RISC-V psABI (ILP32D, long double is binary128); RV32A has no 64-bit AMO or LR/SC: `__GCC_ATOMIC_LLONG_LOCK_FREE` = 1 |
| ppc64le | LP64 | 8 | 8 | 16/16 | 64-bit ELF ABI v2 (long double is IBM double-double or binary128, 16 bytes); ldarx/stdcx. |
| s390x | LP64 | 8 | 8 | 16/8 | s390x ELF ABI supplement; CSG (64-bit compare and swap) |
| mips | ILP32 (o32) | 4 | 4 | 8/8 | MIPS o32 ABI; MIPS32 LL/SC is 32-bit only: `__GCC_ATOMIC_LLONG_LOCK_FREE` = 1 |
| mips64 | LP64 (n64) | 8 | 8 | 16/16 | MIPS n64 ABI; LLD/SCD |

`atomic width` is the widest integer the target accesses lock-free: the figure is GCC's
predefined `__GCC_ATOMIC_<TYPE>_LOCK_FREE` macro (2 = always lock-free) for `long long`,
as printed by `gcc -dM -E -x c /dev/null` for the target's default `-march`. A width that
is not lock-free goes through libatomic's lock table, which is not atomic against another
process or a vCPU, so the library refuses it at run time and the plugin statically.

Sizes of the data-model types: `c_long`/`c_ulong` are 8 bytes on LP64, 4 on ILP32 and
LLP64; `c_size_t`/`c_ssize_t` are the pointer size; `c_wchar` is 2 bytes on Windows, 4
elsewhere. The fixed-width types have their names' sizes everywhere.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Architecture:
    """One row of the table above (the `long_double_*` figures are Linux's)."""

    name: str
    pointer_size: int
    atomic_width: int
    long_double_size: int
    long_double_alignment: int


ARCHITECTURES: Final = {
    arch.name: arch
    for arch in (
        Architecture("x86_64", 8, 8, 16, 16),
        Architecture("aarch64", 8, 8, 16, 16),
        Architecture("i686", 4, 8, 12, 4),
        Architecture("armv7", 4, 8, 8, 8),
        Architecture("riscv64", 8, 8, 16, 16),
        Architecture("riscv32", 4, 4, 16, 16),
        Architecture("ppc64le", 8, 8, 16, 16),
        Architecture("s390x", 8, 8, 16, 8),
        Architecture("mips", 4, 4, 8, 8),
        Architecture("mips64", 8, 8, 16, 16),
    )
}

ALIASES: Final = {
    "amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "i386": "i686", "i586": "i686",
    "x86": "i686", "armv7l": "armv7", "armhf": "armv7", "arm": "armv7", "ppc64el": "ppc64le",
    "mipsel": "mips", "mips64el": "mips64",
}

DATA_MODELS: Final = ("LP64", "ILP32", "LLP64")
OPERATING_SYSTEMS: Final = ("linux", "windows", "macos", "freebsd")


@dataclass(frozen=True)
class Target:
    """An architecture, an operating system and the data model they give."""

    architecture: Architecture
    operating_system: str
    data_model: str

    @property
    def long_size(self) -> int:
        return 8 if self.data_model == "LP64" else 4

    @property
    def long_double_size(self) -> int:
        """`long double` is plain `double` with MSVC and on Apple arm64."""
        if self._long_double_is_double:
            return 8
        return self.architecture.long_double_size

    @property
    def long_double_alignment(self) -> int:
        if self._long_double_is_double:
            return 8
        return self.architecture.long_double_alignment

    @property
    def _long_double_is_double(self) -> bool:
        return self.operating_system == "windows" or (
            self.operating_system == "macos" and self.architecture.name == "aarch64")

    @property
    def eight_byte_field_alignment(self) -> int:
        """Alignment of an 8-byte scalar inside a Structure: 4 in the i386 SysV ABI."""
        if self.architecture.name == "i686" and self.operating_system != "windows":
            return 4
        return 8

    @property
    def wchar_size(self) -> int:
        return 2 if self.operating_system == "windows" else 4

    def describe(self) -> str:
        return f"{self.architecture.name} ({self.data_model}, {self.operating_system})"


def normalize_architecture(name: str) -> str:
    """The table's name for an architecture name as `uname -m` or a user writes it."""
    lowered = name.strip().lower()
    return ALIASES.get(lowered, lowered)


def default_data_model(architecture: Architecture, operating_system: str) -> str:
    if architecture.pointer_size == 4:
        return "ILP32"
    return "LLP64" if operating_system == "windows" else "LP64"


def make_target(architecture: str, operating_system: str | None = None,
                data_model: str | None = None) -> Target:
    """A Target, or ValueError naming the accepted values."""
    name = normalize_architecture(architecture)
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown target {architecture!r}; expected one of "
                         + ", ".join(ARCHITECTURES))
    arch = ARCHITECTURES[name]
    system = (operating_system or "linux").strip().lower()
    if system not in OPERATING_SYSTEMS:
        raise ValueError(f"unknown os {operating_system!r}; expected one of "
                         + ", ".join(OPERATING_SYSTEMS))
    model = (data_model or default_data_model(arch, system)).strip().upper()
    if model not in DATA_MODELS:
        raise ValueError(f"unknown data_model {data_model!r}; expected one of "
                         + ", ".join(DATA_MODELS))
    if model != "ILP32" and arch.pointer_size == 4:
        raise ValueError(f"{name} has 4-byte pointers: its data model is ILP32, not {model}")
    return Target(arch, system, model)


def host_target() -> Target:
    """The machine running mypy, the default when the config names no target."""
    system = {"win32": "windows", "darwin": "macos"}.get(sys.platform, "linux")
    if sys.platform.startswith("freebsd"):
        system = "freebsd"
    machine = normalize_architecture(platform.machine() or "x86_64")
    if machine not in ARCHITECTURES:
        machine = "x86_64" if sys.maxsize > 2**32 else "i686"
    return make_target(machine, system)
