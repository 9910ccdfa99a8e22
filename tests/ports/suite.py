"""The runtime test suite under a port's Python, and what came of it.

The runtime suite is every test but the type-checker tests (marked `type_checker`: mypy,
pyright, ruff, stubtest, the plugin), the long runs and these port tests themselves. It
runs with the repository, its `mypy_plugin/` directory (imported by the type-checker
modules at collection) and the pure-Python test packages on PYTHONPATH; the foreign
interpreter writes its bytecode to the cache, not into the repository.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from .emulator_limits import EMULATOR_VARIABLE, HOST_BYTE_ORDER_VARIABLE
from .extension import build_extension
from .foreign_plugin import EXAMPLES_VARIABLE, PARTIAL_SUFFIX, PROFILE, REPORT_VARIABLE
from .roots import REPOSITORY, Root, cache_home

STRESS_SCALE_VARIABLE: Final = "VM_MEMORY_STRESS_SCALE"
"""As tests/support.py names it (the harness does not import the suite's modules)."""

SELECTION: Final = "not long and not type_checker and not ports"
"""The runtime suite, as a marker expression."""
IGNORED: Final = ("tests/ports", "tests/plugin")
"""Not even collected: these port tests, and the plugin's tests (every one a type-checker
test, and their modules import what only the host has: mypy, yaml)."""
SCOPE_VARIABLE: Final = "VM_MEMORY_PORTS_SUITE"
"""What an emulated port runs: `full` (the default, the whole runtime suite) or `core`
(the `CORE` files). A native port runs the whole suite either way."""
SCOPES: Final = ("full", "core")
CORE: Final = (
    # layouts, sizes and alignments as the target's ABI has them
    "tests/test_address.py", "tests/test_byte_valued.py", "tests/test_inherited_fields.py",
    "tests/test_memory_layout.py", "tests/test_errors.py",
    # byte order: native reads, explicit-endian types, virtio rings, vhost-user messages
    "tests/test_volatile.py", "tests/virtio/test_queue.py", "tests/vhost/test_protocol.py",
    # signals: qemu-user delivers a process's signals to any of its threads
    "tests/vhost/test_stop.py",
    # atomics: the widths refused, libatomic, against threads and processes
    "tests/test_atomic_refusals.py", "tests/test_torn_reads.py", "tests/test_lost_updates.py",
    # the cross-compiled extension, against the pure path on every region kind
    "tests/test_compiled_path.py", "tests/test_contract.py", "tests/test_region_lookup.py",
    "tests/test_region_table.py",
    # mmap flags (their values differ per architecture), files, windows
    "tests/test_mmap_backends.py", "tests/test_mmap_regions.py",
    "tests/test_mapping_windows.py", "tests/test_bulk_build.py",
)
"""The runtime suite's files where the architecture shows through (the ABI, the byte
order, the atomics, the compiled path, the kernel's mmap flags): what CI runs on each
emulated port. The whole suite on the six emulated ports costs about 54 minutes of one
core (README, "Tested architectures"), which would double a CI run's length;
`python -m tests.ports` runs it whole."""
SUITE_TIMEOUT_SECONDS: Final = 3600
EMULATED_EXAMPLES: Final = 25
"""Hypothesis examples per property under an emulator (the host suite runs 150): each
property still runs, at a sixth of the cost. A native port runs the host's 150."""
EMULATED_STRESS_SCALE: Final = "0.1"
"""`support.scaled`'s factor under an emulator (VM_MEMORY_STRESS_SCALE): a tenth of the
host's stress iterations, each costing ten to fifty times as much there."""
OUTCOMES: Final = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


@dataclass
class SuiteResult:
    """One port's run: the outcome of every test, with a skip's reason."""

    root: Root
    seconds: float
    cpu_seconds: float
    """User and system time of the run and every process it waited for: the cost on a
    quiet machine (wall time here depends on what else runs)."""
    exit_status: int
    max_examples: int
    outcomes: list[dict[str, Any]]
    deselected: list[str]
    log: Path
    paths: tuple[str, ...] = ("tests",)
    """What ran: the whole suite, or the `CORE` files."""
    counts: Counter[str] = field(init=False)

    def __post_init__(self) -> None:
        self.counts = Counter(outcome["outcome"] for outcome in self.outcomes)

    @property
    def green(self) -> bool:
        return (self.exit_status == 0 and self.counts["passed"] > 0
                and not any(self.counts[name] for name in ("failed", "error", "xpassed")))

    def tests(self, outcome: str) -> list[dict[str, Any]]:
        return [item for item in self.outcomes if item["outcome"] == outcome]

    def summary(self) -> str:
        """passed/failed/skipped counts, then each skip and failure with its reason, and the
        tests that failed, errored or passed unexpectedly by name."""
        counts = ", ".join(f"{self.counts[name]} {name}" for name in OUTCOMES
                           if self.counts[name] or name in ("passed", "failed", "skipped"))
        what = "" if self.paths == ("tests",) else f", core: {len(self.paths)} files"
        lines = [f"{self.root.port.debian} ({self.root.describe()}{what}): {counts} "
                 f"in {self.seconds:.0f} s ({self.cpu_seconds:.0f} s of CPU); "
                 f"hypothesis {self.max_examples} examples; "
                 f"exit status {self.exit_status}"]
        for outcome in ("failed", "error", "xpassed", "xfailed", "skipped"):
            reasons = Counter(item["reason"] for item in self.tests(outcome))
            for reason, count in reasons.items():
                lines.append(f"  {outcome} ({count}): {reason}")
                if outcome in ("failed", "error", "xpassed"):  # named: CI shows only this
                    lines += [f"    {item['test']}" for item in self.tests(outcome)
                              if item["reason"] == reason]
        return "\n".join(lines)


def foreign_environment(root: Root, site: Path) -> dict[str, str]:
    """The environment of the port's Python: the repository and the test packages on its
    path, its bytecode in the cache."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(site), str(REPOSITORY), str(REPOSITORY / "mypy_plugin")])
    environment["PYTHONPYCACHEPREFIX"] = str(cache_home() / f"pycache-{root.port.debian}")
    # Bytecode is written (to the cache): without it every emulated interpreter compiles
    # each module it imports again, 15 s for the suite's imports under qemu-s390x.
    for name in ("PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "PYTHONDONTWRITEBYTECODE"):
        environment.pop(name, None)
    return environment


def ignored() -> list[str]:
    """pytest's options that leave the IGNORED directories out."""
    return [option for directory in IGNORED for option in ("--ignore", directory)]


def scope_from_environment() -> str:
    """The scope `VM_MEMORY_PORTS_SUITE` asks for (`full` where unset)."""
    scope = os.environ.get(SCOPE_VARIABLE) or "full"
    if scope not in SCOPES:
        raise ValueError(f"{SCOPE_VARIABLE}={scope!r}: expected one of {SCOPES}")
    return scope


def suite_paths(root: Root, scope: str) -> tuple[str, ...]:
    """What the port runs in `scope`: the `CORE` files for an emulated port's core run,
    else the whole suite."""
    return CORE if scope == "core" and root.port.emulator is not None else ("tests",)


def run_suite(root: Root, site: Path, *, max_examples: int | None = None,
              arguments: tuple[str, ...] = (), scope: str = "full") -> SuiteResult:
    """Run the runtime suite under the port's Python (extra pytest `arguments` narrow it;
    `scope` as `suite_paths`), on the compiled access path built for it (the suite's
    pure-path runs force the pure path per test, as on the host)."""
    build_extension(root)
    paths = suite_paths(root, scope)
    if max_examples is None:
        max_examples = 150 if root.port.emulator is None else EMULATED_EXAMPLES
    runs = cache_home() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    # a narrowed or core run does not replace the full run's files
    label = root.port.debian + ("-narrowed" if arguments else
                                "-core" if paths != ("tests",) else "")
    report, log = runs / f"{label}.json", runs / f"{label}.log"
    partial = report.with_name(report.name + PARTIAL_SUFFIX)
    report.unlink(missing_ok=True)
    partial.unlink(missing_ok=True)
    environment = foreign_environment(root, site)
    environment.update({REPORT_VARIABLE: str(report), "HYPOTHESIS_PROFILE": PROFILE,
                        EXAMPLES_VARIABLE: str(max_examples),
                        EMULATOR_VARIABLE: root.port.emulator or "",
                        HOST_BYTE_ORDER_VARIABLE: sys.byteorder})
    if root.port.emulator is not None:
        environment[STRESS_SCALE_VARIABLE] = EMULATED_STRESS_SCALE
    command = [str(root.python), "-m", "pytest", "-p", "tests.ports.foreign_plugin",
               "-m", SELECTION, *ignored(), "-q", "-rfE",
               *(arguments or paths)]
    started = time.monotonic()
    with log.open("w") as output:
        exit_status, cpu_seconds = run_measured(command, environment, output)
    seconds = time.monotonic() - started
    if report.exists():
        document = json.loads(report.read_text())
        return SuiteResult(root, seconds, cpu_seconds, exit_status, document["max_examples"],
                           document["outcomes"], document["deselected"], log, paths)
    if not partial.exists():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise RuntimeError(f"pytest under {root.port.debian} wrote no report "
                           f"(exit status {exit_status}):\n{tail}")
    # Killed (the watchdog) or crashed before the end: what finished, and the run is red.
    outcomes = [json.loads(line) for line in partial.read_text().splitlines()
                if line.endswith("}")]
    outcomes.append({"test": f"<the {root.port.debian} run>", "outcome": "error",
                     "when": "session", "seconds": seconds,
                     "reason": f"pytest ended with exit status {exit_status} before its "
                               f"report, after {len(outcomes)} outcomes (killed or crashed; "
                               f"the watchdog kills it after {SUITE_TIMEOUT_SECONDS} s)"})
    return SuiteResult(root, seconds, cpu_seconds, exit_status, max_examples, outcomes, [],
                       log, paths)


def run_measured(command: list[str], environment: dict[str, str],
                 output: IO[str]) -> tuple[int, float]:
    """(exit status, CPU seconds of the process and its descendants); killed after
    SUITE_TIMEOUT_SECONDS."""
    process = subprocess.Popen(command, cwd=REPOSITORY, env=environment, stdout=output,
                               stderr=subprocess.STDOUT, start_new_session=True)
    watchdog = threading.Timer(SUITE_TIMEOUT_SECONDS, os.killpg, (process.pid, signal.SIGKILL))
    watchdog.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        watchdog.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime
