"""Which access path runs: the compiled one (the optional C extension) or the pure one.

The pure path — `mmap` + `ctypes` — is the reference and always there. The compiled path
is the C extension `vm_memory._fastpath`, built at install time where a C compiler is
available: it gives `GuestAddress`, `AlignedGuestAddress`, `GuestMemoryRegion` and
`GuestMemory` C base types and runs the hot operations in C, handing everything else —
every refusal included — to the same Python general paths, so both give one answer.

The choice is made once, when `vm_memory` is first imported: set the environment
variable `VM_MEMORY_PURE=1` before that to force the pure path. A source tree whose
extension is older than its C source runs the pure path with a `RuntimeWarning`.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final, Literal

PURE_ENVIRONMENT_VARIABLE: Final = "VM_MEMORY_PURE"
"""Set to anything but "" or "0" (before importing vm_memory) to force the pure path."""


@dataclass(frozen=True)
class AccessPath:
    """The access path in use and why."""

    name: Literal["compiled", "pure"]
    reason: str

    def __str__(self) -> str:
        return self.name


def _load() -> tuple[ModuleType | None, str]:
    forced = os.environ.get(PURE_ENVIRONMENT_VARIABLE, "")
    if forced not in ("", "0"):
        return None, f"forced by {PURE_ENVIRONMENT_VARIABLE}={forced}"
    try:
        _fastpath = importlib.import_module("vm_memory._fastpath")
    except ImportError as error:
        return None, f"the C extension vm_memory._fastpath is not built here ({error})"
    source = Path(__file__).with_name("_fastpath.c")
    if source.is_file():  # a source tree: a build older than its source is not used
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
        if digest != _fastpath.SOURCE_DIGEST:
            reason = ("the C extension is older than vm_memory/_fastpath.c (rebuild it: "
                      "pip install -e .)")
            # Said aloud: a developer timing or testing "the compiled path" would otherwise
            # measure the pure one without knowing.
            warnings.warn(f"vm_memory runs on the pure access path: {reason}", RuntimeWarning,
                          stacklevel=2)
            return None, reason
    return _fastpath, "the C extension vm_memory._fastpath"


compiled, _REASON = _load()
"""The extension module when the compiled path is active, else None (library-internal)."""

_PATH: Final = AccessPath("pure" if compiled is None else "compiled", _REASON)


def access_path() -> AccessPath:
    """The access path in use: `access_path().name` is "compiled" or "pure"."""
    return _PATH


def check_registrations() -> None:
    """After the library's modules are imported: every class, helper and general path the
    compiled path falls back on was registered (a missing one would be a SystemError at
    the first call that needs it)."""
    if compiled is not None:
        missing: list[str] = compiled.missing_registrations()
        if missing:
            raise ImportError(f"vm_memory._fastpath: nothing registered for {missing}")
