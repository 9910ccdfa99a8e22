"""What the test files share: where the repository is, how to run its code in a fresh
interpreter, how to compare the library with the reference model, when a test may skip,
how to run a control that has to provoke a race, and how far to scale stress loops.

Import it as ``from support import ...`` from any directory under ``tests/`` (the
``conftest.py`` beside this file puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import ctypes
import os
import random
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Generic, NoReturn, TypeVar

import pytest
from reference_model import ExpectedError, MemoryModel

from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemory

__all__ = [
    "ON_CI",
    "ROOT",
    "ByteDevice",
    "agree",
    "provoke",
    "provoke_overlapping",
    "python_environment",
    "random_access",
    "require",
    "run_python",
    "run_python_code",
    "scaled",
    "stable_id",
    "unavailable",
    "unstable_ids",
]

_T = TypeVar("_T")

ROOT: Final = Path(__file__).resolve().parent.parent
"""The repository root: the checkout whose code the tests run."""

ON_CI: Final = os.environ.get("CI", "").lower() in ("1", "true", "yes")
"""CI (``CI=true``) provides every piece of infrastructure: there a test never skips."""

SUBPROCESS_TIMEOUT: Final = 300.0
"""Seconds after which a child interpreter is a failure, not a hang (generous: the
machine may be loaded by a parallel run)."""


class ByteDevice:
    """A device model for `DeviceRegion`: a byte array, counting the calls it serves."""

    def __init__(self, content: bytes) -> None:
        self.data = bytearray(content)
        self.calls = 0

    def read(self, offset: int, size: int) -> bytes:
        self.calls += 1
        return bytes(self.data[offset:offset + size])

    def write(self, offset: int, data: bytes) -> None:
        self.calls += 1
        self.data[offset:offset + len(data)] = data


def python_environment(**extra: str) -> dict[str, str]:
    """This process's environment with the repository first on ``PYTHONPATH``, so a child
    interpreter imports the code under test (not another installed copy); plus ``extra``."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [environment.get("PYTHONPATH")])])
    environment.update(extra)
    return environment


def run_python(*arguments: str, timeout: float = SUBPROCESS_TIMEOUT,
               environment: Mapping[str, str] | None = None, cwd: Path = ROOT,
               pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``python ARGUMENTS`` in a fresh interpreter running this checkout; text output
    captured, the exit status left to the caller."""
    return subprocess.run([sys.executable, *arguments],
                          env=python_environment(**(environment or {})), cwd=cwd,
                          pass_fds=pass_fds, capture_output=True, text=True,
                          timeout=timeout, check=False)


def run_python_code(code: str, *, timeout: float = SUBPROCESS_TIMEOUT,
                    environment: Mapping[str, str] | None = None
                    ) -> subprocess.CompletedProcess[str]:
    """`run_python` of ``-c code`` (dedented)."""
    return run_python("-c", textwrap.dedent(code), timeout=timeout, environment=environment)


def stable_id(value: object) -> str:
    """A test id for a parameter that is the same in every process: ``pytest -n`` runs
    only if every worker collects the same ids, so never a default ``repr`` with a
    memory address in it."""
    if isinstance(value, type):
        return value.__qualname__
    if value is None or isinstance(value, int | float | str | bytes):
        return repr(value)
    simple_value = getattr(value, "value", None)
    if simple_value is not None and isinstance(simple_value, int | float | str | bytes):
        return f"{type(value).__qualname__}({simple_value!r})"
    return f"{type(value).__qualname__} instance"


_MEMORY_ADDRESS: Final = re.compile(r" at 0x[0-9a-fA-F]+")


def unstable_ids(node_ids: Iterable[str]) -> list[str]:
    """The test ids that hold a memory address (a default ``repr``)."""
    return [node_id for node_id in node_ids if _MEMORY_ADDRESS.search(node_id)]


def unavailable(reason: str) -> NoReturn:
    """What a test does when the machine lacks what it needs: skip, saying why; on CI,
    which must provide everything, fail instead."""
    if ON_CI:
        pytest.fail(f"CI must provide what this test needs: {reason}")
    pytest.skip(reason)


def require(reason: str | None) -> None:
    """`unavailable(reason)` unless ``reason`` is None (the thing is available)."""
    if reason is not None:
        unavailable(reason)


def agree(library_call: Callable[[], object], model_call: Callable[[], object]) -> None:
    """The library returns what the reference model returns, or raises the error (with
    the facts) the model names."""
    try:
        expected = model_call()
    except ExpectedError as error:
        with pytest.raises(error.error_type) as raised:
            library_call()
        for name, value in error.facts.items():
            assert getattr(raised.value, name) == value, (name, raised.value)
        return
    assert library_call() == expected


STRESS_SCALE_VARIABLE: Final = "VM_MEMORY_STRESS_SCALE"
"""The one knob for slow interpreters: a factor (0 < f <= 1, default 1) on the iteration
counts of the stress and lost-update tests, and on the region table's model checks
(`tests/test_region_table.py`: examples and steps). tests/ports sets it under qemu-user, where
each emulated iteration costs ten to fifty host ones; the races the controls provoke are
between processes running at once, so fewer slower iterations overlap as long, and every
control still runs under `provoke` and must show its failure. Never above 1: a scaled
test is never made longer than the host's."""


def scaled(iterations: int, *, at_least: int) -> int:
    """``iterations`` times the stress scale, never fewer than ``at_least``, and of the
    same parity (a test may count on an odd number of toggles)."""
    factor = float(os.environ.get(STRESS_SCALE_VARIABLE, "1"))
    if not 0 < factor <= 1:
        raise ValueError(f"{STRESS_SCALE_VARIABLE}={factor}: must be in (0, 1]")
    count = max(at_least, round(iterations * factor))
    return min(iterations, count + (count - iterations) % 2)


def provoke(attempt: Callable[[], _T], shown: Callable[[_T], bool], *, attempts: int,
            what: str) -> _T:
    """Run a control up to ``attempts`` times until ``shown(result)``; its result.

    A control proves that a check can fail by provoking the failure, often a race. On a
    loaded machine one attempt may find the racers never overlapped; a bounded number of
    attempts makes the control reliable without ever counting a miss as a pass. Fails,
    naming ``what`` and every result, when no attempt showed it.
    """
    results: list[_T] = []
    for _ in range(attempts):
        result = attempt()
        if shown(result):
            return result
        results.append(result)
    pytest.fail(f"the control never showed {what} in {attempts} attempts: {results}")


OVERLAP_DEADLINE_SECONDS: Final = 300.0
"""How long `provoke_overlapping` may look for racers that ran at once."""
OVERLAPPED_PARALLELISM: Final = 1.3
"""CPU seconds per wall second above which two racers in one process ran at once for a
good part of the race (both on a core: up to 2; taking turns on one: at most 1)."""


@dataclass(frozen=True)
class Timed(Generic[_T]):
    """An attempt's result, with the process's CPU time over the wall time it took."""

    result: _T
    parallelism: float

    @property
    def overlapped(self) -> bool:
        return self.parallelism >= OVERLAPPED_PARALLELISM


def timed(attempt: Callable[[], _T]) -> Timed[_T]:
    """Run `attempt`, measuring how many cores the process kept busy meanwhile."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = attempt()
    return Timed(result, (time.process_time() - cpu) / max(time.perf_counter() - wall, 1e-9))


def provoke_overlapping(attempt: Callable[[], _T], shown: Callable[[_T], bool], *,
                        attempts: int, what: str) -> _T:
    """`provoke` for a race between threads of this process (a vCPU and a host thread):
    an attempt counts only if the racers ran at once (`Timed.overlapped`); on a loaded
    machine the scheduler may let them take turns on one core for a whole attempt, which
    shows nothing either way. Runs until `attempts` overlapped attempts, or until
    `OVERLAP_DEADLINE_SECONDS`; fails, naming `what` and every result, unless one showed
    it."""
    results: list[Timed[_T]] = []
    deadline = time.monotonic() + OVERLAP_DEADLINE_SECONDS
    while sum(result.overlapped for result in results) < attempts \
            and time.monotonic() < deadline:
        result = timed(attempt)
        if shown(result.result):
            return result.result
        results.append(result)
    overlapped = sum(result.overlapped for result in results)
    pytest.fail(f"the control never showed {what} in {len(results)} attempts ({overlapped} "
                f"with the racers at once): {results}")


def random_access(memory: GuestMemory, model: MemoryModel, rng: random.Random, address: int,
                  length: int) -> None:
    """One access of a random kind at ``address`` (``length`` bytes for bulk ones), by
    the library and by the model, which must `agree`: read, write, read_bytes,
    write_slice, read/write_obj_unaligned of a u32, write_obj of the aligned u64 there."""
    data = rng.randbytes(length)
    operation = rng.randrange(7)
    if operation == 0:
        def library_read() -> bytes:
            buffer = bytearray(length)
            return bytes(buffer[:memory.read(GuestAddress(address), buffer)])
        agree(library_read, lambda: model.read(address, length))
    elif operation == 1:
        agree(lambda: memory.write(GuestAddress(address), data),
              lambda: model.write(address, data))
    elif operation == 2:
        agree(lambda: memory.read_bytes(GuestAddress(address), length),
              lambda: model.read_slice(address, length))
    elif operation == 3:
        agree(lambda: memory.write_slice(GuestAddress(address), data),
              lambda: model.write_slice(address, data))
    elif operation == 4:
        agree(lambda: memory.read_obj_unaligned(GuestAddress(address), ctypes.c_uint32),
              lambda: int.from_bytes(model.read_obj_unaligned(address, ctypes.c_uint32),
                                     sys.byteorder))
    elif operation == 5:
        value = rng.randrange(1 << 32)
        agree(lambda: memory.write_obj_unaligned(GuestAddress(address), ctypes.c_uint32,
                                                 value),
              lambda: model.write_obj_unaligned(address, ctypes.c_uint32, value))
    else:
        aligned = address & ~7
        word = rng.randrange(1 << 64)
        slot = AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(aligned))
        agree(lambda: memory.write_obj(slot, word),
              lambda: model.write_obj(aligned, ctypes.c_uint64, word))
