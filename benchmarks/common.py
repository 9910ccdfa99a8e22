"""Timing helpers shared by the benchmarks: interleaved best-of-N samples, ratios, tables.

Every figure is a ratio to a raw baseline measured in the same run on the same memory.
On a shared, noisy machine absolute numbers drift, so the two sides of a comparison are
sampled alternately (drift hits both alike) and the best of several samples is kept.
Each sample is net of its own empty loop (`overhead_stmt`, timed the same way), so a
ratio compares the cost of the operations, not of the benchmark's loop. Every name of a
case's namespace is bound to a local variable before the loop, on both sides alike.
Each sample follows one untimed run of its statement, so it times the steady cost on both
sides, whatever the rows sampled before it left in the caches.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

RatioKind = Literal["slowdown", "bandwidth"]
"""`slowdown`: ours / baseline time (lower is better); `bandwidth`: baseline / ours time,
the fraction of the raw bandwidth we reach (higher is better)."""


@dataclass(frozen=True)
class Settings:
    """How hard to measure: samples per case and the minimum length of one sample."""

    repeats: int
    min_sample_ns: int
    quick: bool


# Many short samples beat a few long ones on a loaded machine: a 2 ms sample often runs
# without being preempted, so the best of 31 is close to the undisturbed cost.
FULL = Settings(repeats=31, min_sample_ns=2_000_000, quick=False)
QUICK = Settings(repeats=3, min_sample_ns=500_000, quick=True)


@dataclass(frozen=True)
class Case:
    """A timed statement: `stmt` runs after `setup` in `namespace`; it performs
    `ops_per_stmt` operations. `overhead_stmt` is the same loop doing nothing."""

    label: str
    stmt: str
    namespace: dict[str, Any]
    setup: str = "pass"
    ops_per_stmt: int = 1
    overhead_stmt: str = "pass"


@dataclass(frozen=True)
class Comparison:
    """Our operation against a raw baseline doing the same work on the same memory."""

    operation: str
    ours: Case
    baseline: Case
    kind: RatioKind = "slowdown"
    target: float | None = None
    bytes_per_op: int = 0
    """For bulk copies: bytes moved per operation, to print bandwidths."""


@dataclass(frozen=True)
class Skipped:
    """A row that could not be measured here, and why."""

    operation: str
    reason: str


class _Sampler:
    """Times one Case: calibrates the loop count, then collects samples on demand."""

    def __init__(self, case: Case, min_sample_ns: int) -> None:
        self.case = case
        setup = "\n".join([*(f"{name} = globals()[{name!r}]" for name in case.namespace),
                           case.setup])
        self._timer = timeit.Timer(case.stmt, setup, timer=time.perf_counter_ns,
                                   globals=case.namespace)
        self._overhead = timeit.Timer(case.overhead_stmt, setup,
                                      timer=time.perf_counter_ns, globals=case.namespace)
        self.number = 1
        self._timer.timeit(1)  # calibrate on the steady cost, not on a first, cold run
        while True:
            elapsed = self._timer.timeit(self.number)
            if elapsed >= min_sample_ns:
                break
            grow = min_sample_ns / max(elapsed, 1) * 1.2
            self.number = max(self.number * 2, int(self.number * min(grow, 100)))
        self.samples: list[float] = []
        self.overheads: list[float] = []

    def sample(self) -> None:
        # The rows sampled in between may have evicted what this statement touches (10,000
        # regions' objects and page-table entries, say). Without this run, a statement slow
        # enough to be sampled once per sample would be timed cold while its baseline, run
        # eight times a sample, was timed mostly warm.
        self._timer.timeit(1)
        self.samples.append(self._timer.timeit(self.number))
        self.overheads.append(self._overhead.timeit(self.number))

    def _per_op(self, total: float) -> float:
        loop = min(self.overheads)
        return max(total - loop, 0.0) / (self.number * self.case.ops_per_stmt)

    @property
    def best_ns(self) -> float:
        return self._per_op(min(self.samples))

    @property
    def median_ns(self) -> float:
        return self._per_op(statistics.median(self.samples))


@dataclass(frozen=True)
class Row:
    """One measured comparison."""

    operation: str
    baseline: str
    ours_ns: float
    baseline_ns: float
    ours_median_ns: float
    baseline_median_ns: float
    kind: RatioKind
    target: float | None
    bytes_per_op: int = 0
    samples: int = field(default=0)

    @property
    def ratio(self) -> float:
        """ours/baseline time (slowdown) or baseline/ours time (bandwidth fraction)."""
        if self.kind == "slowdown":
            return self.ours_ns / self.baseline_ns if self.baseline_ns else float("inf")
        return self.baseline_ns / self.ours_ns if self.ours_ns else float("inf")

    @property
    def within_target(self) -> bool | None:
        if self.target is None:
            return None
        if self.kind == "slowdown":
            return self.ratio <= self.target
        return self.ratio >= self.target

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "none (reported)"
        return f"≤ {self.target:g}" if self.kind == "slowdown" else f"≥ {self.target:g}"

    @property
    def note(self) -> str:
        if not self.bytes_per_op:
            return ""
        return (f"ours {self.bytes_per_op / self.ours_ns:.2f} GB/s, "
                f"raw {self.bytes_per_op / self.baseline_ns:.2f} GB/s")

    def as_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation, "baseline": self.baseline,
            "ours_ns": self.ours_ns, "baseline_ns": self.baseline_ns,
            "ours_median_ns": self.ours_median_ns,
            "baseline_median_ns": self.baseline_median_ns,
            "ratio": self.ratio, "ratio_kind": self.kind, "target": self.target,
            "within_target": self.within_target, "bytes_per_op": self.bytes_per_op,
            "samples": self.samples,
        }


def measure(comparisons: Sequence[Comparison], settings: Settings) -> list[Row]:
    """Time every comparison, interleaving ours and the baseline sample by sample."""
    pairs = [(_Sampler(c.ours, settings.min_sample_ns),
              _Sampler(c.baseline, settings.min_sample_ns)) for c in comparisons]
    for repeat in range(settings.repeats):
        for ours, baseline in pairs:
            first, second = (ours, baseline) if repeat % 2 == 0 else (baseline, ours)
            first.sample()
            second.sample()
    return [
        Row(c.operation, c.baseline.label, ours.best_ns, baseline.best_ns, ours.median_ns,
            baseline.median_ns, c.kind, c.target, c.bytes_per_op, settings.repeats)
        for c, (ours, baseline) in zip(comparisons, pairs, strict=True)
    ]


def format_ns(value: float) -> str:
    """ns with a precision that suits its size."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:.1f}"


def format_ratio(row: Row) -> str:
    return f"{row.ratio:.2f}"


HEADER = ("operation", "ours (ns/op)", "baseline", "baseline (ns/op)", "ratio", "target",
          "within target", "note")


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (ratio: see `RatioKind`)."""
    lines = ["| " + " | ".join(HEADER) + " |",
             "|" + "|".join(["---", "---:", "---", "---:", "---:", "---", "---", "---"]) + "|"]
    for row in rows:
        within = {None: "n/a", True: "yes", False: "no"}[row.within_target]
        cells = (row.operation, format_ns(row.ours_ns), row.baseline,
                 format_ns(row.baseline_ns), format_ratio(row), row.target_text, within,
                 row.note)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe_run(settings: Settings) -> str:
    """One line saying how the figures were taken."""
    return (f"Python {platform.python_version()} on {platform.machine()}, "
            f"best of {settings.repeats} interleaved samples of ≥ "
            f"{settings.min_sample_ns / 1e6:g} ms each, net of the empty loop"
            + (" (--quick: a smoke run, figures are rough)" if settings.quick else ""))


def report(title: str, rows: Sequence[Row], skipped: Sequence[Skipped],
           settings: Settings) -> str:
    """The whole Markdown report: title, how measured, the table, skipped rows."""
    parts = [f"## {title}", "", describe_run(settings) + ".",
             "ratio: for times, ours / baseline (lower is better); for bulk copies "
             "(target ≥), baseline time / ours = the fraction of raw bandwidth reached.",
             "", markdown_table(rows)]
    if skipped:
        parts += ["", "Not measured here:"]
        parts += [f"- {item.operation}: {item.reason}" for item in skipped]
    return "\n".join(parts)


def run_module(title: str,
               comparisons: Callable[[], tuple[list[Comparison], list[Skipped]]],
               argv: Sequence[str]) -> int:
    """The `__main__` of one benchmark module: measure its comparisons, print the table."""
    settings = QUICK if "--quick" in argv else FULL
    measured, skipped = comparisons()
    print(report(title, measure(measured, settings), skipped, settings))
    return 0


# ---- Both access paths side by side ---------------------------------------------------


def child_document(rows: Sequence[Row], skipped: Sequence[Skipped]) -> dict[str, Any]:
    """What a child process measuring one access path reports (see `run_in_path`)."""
    from vm_memory import access_path
    return {"path": access_path().name, "reason": access_path().reason,
            "rows": [row.as_json() for row in rows],
            "skipped": [{"operation": s.operation, "reason": s.reason} for s in skipped]}


def run_in_path(module: str, pure: bool, quick: bool) -> dict[str, Any]:
    """`python -m MODULE --child` in a fresh interpreter on the compiled path or (`pure`)
    the pure one; its JSON document (rows measured against baselines in that process)."""
    from vm_memory import PURE_ENVIRONMENT_VARIABLE
    environment = {key: value for key, value in os.environ.items()
                   if key != PURE_ENVIRONMENT_VARIABLE}
    if pure:
        environment[PURE_ENVIRONMENT_VARIABLE] = "1"
    command = [sys.executable, "-m", module, "--child"] + (["--quick"] if quick else [])
    output = subprocess.run(command, env=environment, capture_output=True, text=True,
                            check=True).stdout
    document: dict[str, Any] = json.loads(output)
    return document


def _cell(row: dict[str, Any] | None) -> tuple[str, str, str]:
    """(ours ns, ratio, within target) of one path's row."""
    if row is None:
        return "—", "—", "not measured"
    within = {None: "n/a", True: "yes", False: "no"}[row["within_target"]]
    if row["target"] is not None:
        sign = "≤" if row["ratio_kind"] == "slowdown" else "≥"
        within = f"{within} ({sign} {row['target']:g})"
    return format_ns(row["ours_ns"]), f"{row['ratio']:.2f}", within


SIDE_BY_SIDE_HEADER = ("operation", "baseline", "compiled (ns/op)", "compiled ratio",
                       "compiled target", "pure (ns/op)", "pure ratio", "pure target")


def side_by_side_table(compiled: dict[str, Any], pure: dict[str, Any]) -> str:
    """One Markdown table of both paths' rows (documents from `run_in_path`), then the
    rows either path could not measure."""
    lines = ["| " + " | ".join(SIDE_BY_SIDE_HEADER) + " |",
             "|---|---|---:|---:|---|---:|---:|---|"]
    by_path = [{row["operation"]: row for row in side["rows"]} for side in (compiled, pure)]
    for operation in dict.fromkeys([*by_path[0], *by_path[1]]):
        first = by_path[0].get(operation) or by_path[1][operation]
        cells = (operation, first["baseline"], *_cell(by_path[0].get(operation)),
                 *_cell(by_path[1].get(operation)))
        lines.append("| " + " | ".join(cells) + " |")
    for side in (compiled, pure):
        for skipped in side["skipped"]:
            lines.append(f"\nNot measured on the {side['path']} path: "
                         f"{skipped['operation']}: {skipped['reason']}")
    return "\n".join(lines)


def path_note(compiled: dict[str, Any]) -> str:
    """A warning when the compiled column is in fact the pure path, else nothing."""
    if compiled["path"] == "compiled":
        return ""
    return (f"The compiled path is not available here ({compiled['reason']}): both "
            "columns are the pure path.\n\n")
