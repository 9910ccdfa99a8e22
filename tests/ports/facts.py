"""The plugin's row for a target against what a real runtime reports (`probe.py`).

The plugin's side is read only through its public functions: `make_target` for the row,
and the ctypes model it checks code with (`scalar_size`, `field_alignment`,
`scalar_alignment`) for each scalar's size and alignments. A disagreement names the
field, the plugin's figure and the runtime's.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from vm_memory_mypy.ctypes_model import field_alignment, scalar_alignment, scalar_size
from vm_memory_mypy.targets import Target

PROBE: Final = Path(__file__).with_name("probe.py")
REPOSITORY: Final = Path(__file__).resolve().parents[2]

SCALARS: Final = (
    "ctypes.c_bool", "ctypes.c_char", "ctypes.c_byte", "ctypes.c_ubyte", "ctypes.c_short",
    "ctypes.c_ushort", "ctypes.c_int", "ctypes.c_uint", "ctypes.c_long", "ctypes.c_ulong",
    "ctypes.c_longlong", "ctypes.c_ulonglong", "ctypes.c_int16", "ctypes.c_uint16",
    "ctypes.c_int32", "ctypes.c_uint32", "ctypes.c_int64", "ctypes.c_uint64",
    "ctypes.c_size_t", "ctypes.c_ssize_t", "ctypes.c_float", "ctypes.c_double",
    "ctypes.c_longdouble", "ctypes.c_wchar",
    *(f"vm_memory.endian.{prefix}{bits}" for prefix in ("Le", "Be", "LeI", "BeI")
      for bits in (16, 32, 64)),
)
"""Every scalar the plugin sizes: its fixed-width types, the data-model types and the
explicit-endian ones."""

ATOMICS: Final = (
    "ctypes.c_bool", "ctypes.c_ubyte", "ctypes.c_uint16", "ctypes.c_uint32",
    "ctypes.c_uint64", "ctypes.c_int64", "ctypes.c_longlong", "ctypes.c_long",
    "ctypes.c_ulong", "ctypes.c_size_t", "ctypes.c_ssize_t",
)
"""Atomic types whose width the plugin checks against the target's atomic width."""

FIXED_WIDTH_ATOMICS: Final = ("ctypes.c_ubyte", "ctypes.c_uint16", "ctypes.c_uint32",
                              "ctypes.c_uint64")


@dataclass(frozen=True)
class Disagreement:
    field: str
    plugin: object
    runtime: object

    def __str__(self) -> str:
        return f"{self.field}: the plugin says {self.plugin}, the runtime {self.runtime}"


def probe(python: Sequence[str], environment: dict[str, str] | None = None,
          timeout: float = 600) -> dict[str, Any]:
    """Run `probe.py` under the interpreter `python` (a command) and return its facts."""
    request = json.dumps({"scalars": SCALARS, "atomics": ATOMICS})
    result = subprocess.run([*python, str(PROBE), request], capture_output=True, text=True,
                            env=environment, cwd=REPOSITORY, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the probe failed under {' '.join(python)}:\n"
                           f"{result.stdout}{result.stderr}")
    facts: dict[str, Any] = json.loads(result.stdout)
    return facts


def widest_atomic(facts: dict[str, Any]) -> int:
    """The widest of 1, 2, 4, 8 bytes that works, with every narrower one working."""
    width = 0
    for name in FIXED_WIDTH_ATOMICS:
        if facts["atomics"][name] != "ok":
            break
        width = facts["scalars"][name]["size"]
    return width


def disagreements(target: Target, facts: dict[str, Any]) -> list[Disagreement]:
    """Every figure where the plugin's `target` and the runtime's `facts` differ."""
    found: list[Disagreement] = []

    def compare(field: str, plugin: object, runtime: object) -> None:
        if plugin != runtime:
            found.append(Disagreement(field, plugin, runtime))

    scalars = facts["scalars"]
    compare("pointer size", target.architecture.pointer_size, facts["pointer_size"])
    compare("c_longdouble alignment", target.long_double_alignment,
            scalars["ctypes.c_longdouble"]["alignment"])
    compare("alignment of a 64-bit field in a Structure", target.eight_byte_field_alignment,
            scalars["ctypes.c_uint64"]["field_alignment"])
    compare("atomic width", target.architecture.atomic_width, widest_atomic(facts))
    for name in SCALARS:
        short = name.rpartition(".")[2]
        compare(f"{short} size", scalar_size(name, target), scalars[name]["size"])
        compare(f"{short} alignment as a Structure field", field_alignment(name, target),
                scalars[name]["field_alignment"])
        compare(f"{short} alignment AlignedGuestAddress requires",
                scalar_alignment(name, target), scalars[name]["required_alignment"])
    for name in ATOMICS:
        size = scalar_size(name, target)
        refused = size is None or size > target.architecture.atomic_width
        outcome = facts["atomics"][name]
        expected = "AtomicWidthUnsupported" if refused else "ok"
        if outcome.split(":")[0] != expected:
            found.append(Disagreement(f"atomic {name.rpartition('.')[2]}",
                                      "refused" if refused else "allowed", outcome))
    return found
