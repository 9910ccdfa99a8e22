"""The benchmark suite runs: `python -m benchmarks.run_all --quick` exits 0 and prints
every row of the performance table on both access paths with a numeric ratio, and
`--json` agrees with it.

A smoke test only: figures are never compared with their targets here (performance is
the benchmarks' report, not a timed assertion).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from host_assumptions import needs_8_byte_atomics
from support import ROOT

EXPECTED_ROWS = [
    *(f"{method} {width}" for width in ("u32", "u64")
      for method in ("read_obj_unaligned", "write_obj_unaligned")),
    *(f"{method} {size}" for size in ("4 KiB", "1 MiB", "64 MiB")
      for method in ("read_slice", "write_slice")),
    "floor for 4 KiB: a Python function that only copies",
    "lookup: read_obj_unaligned u32, 100 regions",
    "lookup: read_obj_unaligned u32, 10,000 regions",
    "memory system: Struct.unpack_from, 10,000 one-page mmaps vs one mmap",
    *(f"{method} {width}" for width in ("u32", "u64")
      for method in ("read_atomic", "read_atomic, same calling convention", "write_atomic",
                     "fetch_add", "swap", "compare_exchange",
                     "read_obj", "write_obj")),
    *(f"{method} 64 MiB over 4 regions" for method in (
        "read_from fd (preadv),", "read_from file object (readinto),",
        "write_to fd (pwritev),", "write_to file object (write),")),
    *(f"{method}: dirty tracking overhead"
      for method in ("write_slice 4 KiB", "write_obj u64", "fetch_add u64")),
]
OPTIONAL_ROW_PREFIXES = ("unicorn ", "atomics package ")


def table_rows(output: str) -> dict[str, list[str]]:
    """Markdown table rows of the report, by operation (header and rule excluded)."""
    rows: dict[str, list[str]] = {}
    for line in output.splitlines():
        if not line.startswith("| ") or line.startswith("| operation "):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def within_cell(row: dict[str, Any]) -> str:
    """The target cell the side-by-side table prints for a JSON row."""
    within = {None: "n/a", True: "yes", False: "no"}[row["within_target"]]
    if row["target"] is None:
        return within
    sign = "≤" if row["ratio_kind"] == "slowdown" else "≥"
    return f"{within} ({sign} {row['target']:g})"


@needs_8_byte_atomics
def test_quick_run_prints_every_row_on_both_paths(tmp_path: Path) -> None:
    """`python -m benchmarks.run_all --quick` measures the whole table on the compiled
    and on the pure path (each in its own process) and prints them side by side; the
    printed cells agree with `--json`."""
    json_path = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_all", "--quick", "--json", str(json_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr

    rows = table_rows(result.stdout)
    missing = [name for name in EXPECTED_ROWS if name not in rows]
    assert not missing, f"rows missing from the table: {missing}\n{result.stdout}"
    unexpected = [name for name in rows if name not in EXPECTED_ROWS
                  and not name.startswith(OPTIONAL_ROW_PREFIXES)]
    assert not unexpected, f"rows nobody expects: {unexpected}"
    document = json.loads(json_path.read_text(encoding="utf-8"))
    assert document["pure"]["path"] == "pure"
    if document["compiled"]["path"] != "compiled":
        assert os.environ.get("CI") != "true", "the compiled path must be built on CI"
    for name, cells in rows.items():
        assert len(cells) == 8, f"{name}: {cells}"
        for side, first in (("compiled", 2), ("pure", 5)):
            by_name = {row["operation"]: row for row in document[side]["rows"]}
            assert name in by_name, (side, name)
            row = by_name[name]
            ours = float(cells[first].replace(",", ""))
            # The JSON's ratio, not the printed one: a compiled call against an emulated
            # ctypes baseline can print as 0.00. A quick run's few short samples on a
            # loaded machine can leave a ~20 ns call at 0 net of its loop (the figure is
            # clamped there); a missing, negative or NaN figure is still a failure.
            assert row["ratio"] >= 0 and not math.isnan(row["ratio"]), (side, name, row)
            assert ours >= 0 and row["baseline_ns"] >= 0, f"{side} {name}: {cells}"
            assert f"{row['ratio']:.2f}" == cells[first + 1], (side, name)
            assert within_cell(row) == cells[first + 2], (side, name)
    for side in ("compiled", "pure"):
        # An optional alternative that is not installed is named as skipped, never dropped.
        reported = ({row["operation"] for row in document[side]["rows"]}
                    | {item["operation"] for item in document[side]["skipped"]})
        assert set(rows) <= reported
        for prefix in OPTIONAL_ROW_PREFIXES:
            assert any(name.startswith(prefix) for name in reported), (side, prefix)


PATH_ROWS = [
    "read_obj u64", "read_obj_unaligned u64", "write_obj u64",
    *(f"{method} u64 vs struct"
      for method in ("read_atomic", "write_atomic", "fetch_add", "compare_exchange")),
    *(f"{method} u64 vs libatomic"
      for method in ("read_atomic", "write_atomic", "swap", "compare_exchange", "fetch_add",
                     "fetch_sub", "fetch_and", "fetch_or", "fetch_xor")),
    "read_slice 4 KiB", "write_slice 4 KiB", "AlignedGuestAddress.new u64",
    *(f"floor: pure {method} u64 vs libatomic"
      for method in ("read_atomic", "write_atomic", "swap", "compare_exchange", "fetch_add",
                     "fetch_sub", "fetch_and", "fetch_or", "fetch_xor")),
    *(f"floor: {operation}" for operation in (
        "read_obj u64", "write_obj u64", "read_atomic u64", "write_atomic u64",
        "fetch_add u64", "compare_exchange u64", "read_slice 4 KiB")),
    *(f"{method} u64 alternating between 100 regions" for method in ("read_atomic", "read_obj")),
    *(f"{method} u64 alternating, vs the same pages in one region"
      for method in ("read_atomic", "read_obj")),
    "floor: C reference read u64 alternating between 100 regions' pages",
    *(f"floor: pure {method} u64 alternating, a dict probe per switch"
      for method in ("read_atomic", "read_obj")),
    *(f"floor: pure {method} u64, the contract's checks, vs libatomic"
      for method in ("read_atomic", "write_atomic", "fetch_add", "compare_exchange")),
    "lookup at 10,000 regions vs the same 10,000 mmaps",
    "floor: pure lookup at 10,000 regions, a dict probe per read",
]


@needs_8_byte_atomics  # the issue-13 rows are u64 atomics: their width is the point
def test_both_paths_benchmark_measures_every_row_on_each_path(tmp_path: Path) -> None:
    """`python -m benchmarks.bench_paths --quick` measures every issue-13 row on the
    compiled path and on the pure one (each in its own process), the compiled reference
    included, and prints them side by side."""
    json_path = tmp_path / "paths.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_paths", "--quick", "--json", str(json_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(json_path.read_text(encoding="utf-8"))
    assert document["pure"]["path"] == "pure"
    if document["compiled"]["path"] != "compiled":
        assert os.environ.get("CI") != "true", "the compiled path must be built on CI"
        pytest.skip(f"the compiled path is not built here: {document['compiled']['reason']}")
    for side in ("compiled", "pure"):
        rows = {row["operation"]: row for row in document[side]["rows"]}
        assert sorted(rows) == sorted(PATH_ROWS), (side, sorted(rows))
        assert not document[side]["skipped"], document[side]["skipped"]
        for name, row in rows.items():
            # A quick run's few short samples can leave a ~20 ns baseline at 0 net of its
            # loop (an infinite ratio); a missing or negative figure is still a failure.
            assert row["ratio"] > 0 and row["ours_ns"] > 0, (side, name, row)
            assert row["baseline_ns"] >= 0, (side, name, row)
        scale = document[side]["scale"]
        # The bare mmaps' RSS can round to 0 pages (the allocator reuses freed memory).
        assert len(scale) == 5 and all(row["ours"] > 0 and row["raw"] >= 0 for row in scale)
        assert [row["operation"].split(" ")[0] for row in scale] == \
            ["build", "floor:", "insert", "remove", "RSS"], (side, scale)
    printed = table_rows(result.stdout)
    assert set(PATH_ROWS) <= set(printed)
    assert all(len(printed[name]) == 8 for name in PATH_ROWS)


STEADY_COST_SCRIPT = """
import json, time
from benchmarks.common import Case, Comparison, Settings, measure

state = {"cold": True, "cold_runs": 0}

def work():
    if state["cold"]:  # the first run after the other row: its caches evicted
        state["cold_runs"] += 1
        state["cold"] = False
        time.sleep(0.02)

def evict():
    state["cold"] = True

evicting = Case("evicting", "evict()", {"evict": evict})
rows = measure([Comparison("steady", Case("ours", "work()", {"work": work}), evicting),
                Comparison("another row", evicting, evicting)],
               Settings(repeats=5, min_sample_ns=1_000_000, quick=True))
print(json.dumps({"ours_ns": rows[0].ours_ns, "cold_runs": state["cold_runs"]}))
"""


def test_a_sample_times_the_steady_cost_whatever_ran_before_it() -> None:
    """Each sample follows an untimed run of its statement: a statement whose first run
    after another row is slow (20 ms here, as 10,000 regions' objects evicted from the
    caches made the lookup row) is timed at its steady cost, not cold. Without that run
    every sample of this statement is one cold run (its calibration too), and its best is
    20 ms."""
    result = subprocess.run([sys.executable, "-c", STEADY_COST_SCRIPT], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(result.stdout)
    # Another row evicted before its calibration and before each of its 5 samples:
    # 6 cold runs, taken by the untimed runs (or, without them, by the timed ones).
    assert figures["cold_runs"] == 6, figures
    assert figures["ours_ns"] < 5_000_000, figures


@pytest.mark.type_checker
def test_plugin_benchmark_runs_and_reports_a_ratio() -> None:
    """A small run of the mypy-plugin benchmark: both configurations type-check the
    generated module cleanly and the row carries a numeric ratio."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_plugin", "--lines", "300", "--rounds", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines()
               if line.startswith("| generated user module"))
    ratio = float(row.split("|")[5])
    assert ratio > 0
