"""The compiled access path for a port: `vm_memory/_fastpath.c` cross-compiled for it.

The port's Python imports `vm_memory._fastpath` from the checkout, where the host's own
build is `_fastpath.abi3.so`, an x86-64 library it cannot load. Debian's interpreters try
their own suffix first (`.cpython-311-<triplet>.so`), so each port's build sits beside the
host's under that name (ignored by git like the host's) and the port's suite runs the
compiled path as the host's does. Built with the flags of `hatch_build.compile_extension`
(the stable ABI, the source digest the library checks for staleness), by the architecture's
cross compiler against the root's headers; rebuilt on every run, so a changed source is
never tested stale.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

from .roots import REPOSITORY, PortUnavailable, Root

SOURCE: Final = REPOSITORY / "vm_memory" / "_fastpath.c"
LIMITED_API: Final = "0x030B0000"
"""As hatch_build.LIMITED_API (that module needs hatchling, which only builds have)."""


def extension_path(root: Root) -> Path:
    return SOURCE.with_name(f"_fastpath.cpython-311-{root.port.triplet}.so")


def build_extension(root: Root) -> Path:
    """Cross-compile the compiled access path for the root's architecture."""
    port = root.port
    compiler = shutil.which(port.cross_compiler)
    if compiler is None:
        raise PortUnavailable(f"{port.cross_compiler} is not installed (Debian package "
                              f"gcc-{port.cross_compiler.removesuffix('-gcc')})")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    include = root.path / "usr" / "include"
    output = extension_path(root)
    building = output.with_name(f"{output.name}.{os.getpid()}.building")
    command = [compiler, "-std=c11", "-O2", "-fPIC", "-fvisibility=hidden",
               f"-DPy_LIMITED_API={LIMITED_API}", f'-DVM_MEMORY_SOURCE_DIGEST="{digest}"',
               f"-I{include / 'python3.11'}", f"-I{include / port.triplet / 'python3.11'}",
               f"-idirafter{include}", "-shared", str(SOURCE), "-o", str(building)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        building.unlink(missing_ok=True)
        output.unlink(missing_ok=True)  # never a stale build in its place
        raise RuntimeError(f"the compiled path does not build for {port.debian}:\n"
                           f"{' '.join(command)}\n{result.stdout}{result.stderr}")
    os.replace(building, output)  # a run already using the old build keeps a whole file
    return output
