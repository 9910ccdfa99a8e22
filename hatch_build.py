"""Build hook: the optional C extension `vm_memory._fastpath` (the compiled access path).

Compiled against CPython's stable ABI (Py_LIMITED_API 3.11), so one `abi3` wheel per
platform serves every CPython from 3.11 on. Optional, as MarkupSafe's speedups are: with
no working C compiler (or `CC` naming one that fails) the build says why and goes on
pure; the library then runs its pure path (`vm_memory.access_path()` tells which).

- Editable installs compile the extension in place, next to `vm_memory/_fastpath.c`
  (the editable install puts the source tree itself on `sys.path`).
- Wheels carry it as `vm_memory/_fastpath.abi3.so` and get the `cp311-abi3-<platform>`
  tag; a pure wheel (no compiler) is `py3-none-any`.

Environment: `CC` (the compiler command, default: the one Python was built with),
`CFLAGS` (appended), `VM_MEMORY_NO_EXTENSION=1` (build pure on purpose).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("vm_memory") / "_fastpath.c"
TARGET = Path("vm_memory") / "_fastpath.abi3.so"
LIMITED_API = "0x030B0000"
ABI3_PYTHON = "cp311"


def source_digest(source: Path) -> str:
    """What the extension records of its source: a stale build can then be detected."""
    return hashlib.sha256(source.read_bytes()).hexdigest()[:16]


def compiler_command() -> list[str]:
    """`CC`, else the compiler this Python was built with, else `cc`."""
    configured = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(configured)


def compile_extension(root: Path, output: Path) -> str | None:
    """Build the extension into `output`; None on success, else why it was not built."""
    if os.environ.get("VM_MEMORY_NO_EXTENSION", "") not in ("", "0"):
        return "VM_MEMORY_NO_EXTENSION is set"
    source = root / SOURCE
    include = sysconfig.get_paths()["include"]
    link = ["-bundle", "-undefined", "dynamic_lookup"] if sys.platform == "darwin" \
        else ["-shared"]
    command = [
        *compiler_command(), "-std=c11", "-O2", "-fPIC", "-fvisibility=hidden",
        f"-DPy_LIMITED_API={LIMITED_API}", f'-DVM_MEMORY_SOURCE_DIGEST="{source_digest(source)}"',
        f"-I{include}", *link, str(source), "-o", str(output),
        *shlex.split(os.environ.get("CFLAGS", "")),
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                                check=False)
    except OSError as error:
        return f"the compiler could not run ({error})"
    except subprocess.TimeoutExpired:
        return "the compiler did not finish in 600 s"
    if result.returncode != 0:
        return f"the compiler failed:\n{result.stdout}{result.stderr}"
    return None


def platform_tag() -> str:
    return sysconfig.get_platform().replace("-", "_").replace(".", "_")


class CustomBuildHook(BuildHookInterface):
    """Compile the extension for wheels and editable installs; never fail the build."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        if version == "editable":
            output = root / TARGET
            output.unlink(missing_ok=True)  # never leave a stale build behind
            failure = compile_extension(root, output)
        else:
            self._scratch = tempfile.TemporaryDirectory()
            output = Path(self._scratch.name) / TARGET.name
            failure = compile_extension(root, output)
            if failure is None:
                build_data["force_include"][str(output)] = str(TARGET)
        if failure is not None:
            self.app.display_warning(
                f"vm-memory: building without the compiled access path ({failure.strip()}); "
                "the pure path works everywhere, only slower")
            return
        if version != "editable":
            build_data["pure_python"] = False
            build_data["tag"] = f"{ABI3_PYTHON}-abi3-{platform_tag()}"
        self.app.display_info("vm-memory: built the compiled access path (vm_memory._fastpath)")

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        scratch = getattr(self, "_scratch", None)
        if scratch is not None:
            scratch.cleanup()
