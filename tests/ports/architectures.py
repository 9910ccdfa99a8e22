"""The Debian architectures the runtime is proven on, and the plugin target each one is.

Debian's names are its port names (`dpkg --print-architecture`); the plugin's are the
rows of `vm_memory_mypy.targets`. Every port here has a row: Debian's i386 baseline is
i686, armhf is ARMv7-A with hard float, mips64el is the n64 ABI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Port:
    """One Debian architecture: how its programs run here and what the plugin calls it."""

    debian: str
    target: str
    """The plugin's target name (a row of its table)."""
    triplet: str
    """The multiarch directory of its libraries (`/usr/lib/<triplet>`)."""
    emulator: str | None
    """The `qemu-user-static` binary that runs it; None: it runs natively on x86-64."""
    big_endian: bool = False

    @property
    def cross_compiler(self) -> str:
        """The Debian cross compiler for it (gcc-<triplet>; i386's is named for i686)."""
        return f"{self.triplet.replace('i386', 'i686', 1)}-gcc"

    @property
    def native_loader(self) -> str:
        """The dynamic loader that runs the root's programs natively (i386 on x86-64)."""
        if self.emulator is not None:
            raise ValueError(f"{self.debian} runs under {self.emulator}, not natively")
        return "lib/ld-linux.so.2"


PORTS: Final = (
    Port("i386", "i686", "i386-linux-gnu", None),
    Port("armhf", "armv7", "arm-linux-gnueabihf", "qemu-arm-static"),
    Port("arm64", "aarch64", "aarch64-linux-gnu", "qemu-aarch64-static"),
    Port("mipsel", "mips", "mipsel-linux-gnu", "qemu-mipsel-static"),
    Port("mips64el", "mips64", "mips64el-linux-gnuabi64", "qemu-mips64el-static"),
    Port("ppc64el", "ppc64le", "powerpc64le-linux-gnu", "qemu-ppc64le-static"),
    Port("s390x", "s390x", "s390x-linux-gnu", "qemu-s390x-static", big_endian=True),
)

BY_NAME: Final = {port.debian: port for port in PORTS}
