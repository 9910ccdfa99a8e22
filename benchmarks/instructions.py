"""Instructions per operation of `bench_paths` rows, counted by valgrind's cachegrind.

Timing ratios swing with the machine's load; instruction counts do not. For each row
named, each side (ours, the baseline) runs in a child under cachegrind twice, `--calls`
and five times `--calls` operations, and the difference divided by the extra operations
is that side's instructions per operation (the setup, the imports and the interpreter's
start cancel out). The path is the one this process's environment chooses
(`VM_MEMORY_PURE=1` for the pure one). Needs `valgrind`.

Run with `python -m benchmarks.instructions [--calls N] ROW...` (a row's operation name
as `bench_paths` prints it, e.g. "read_atomic u64 vs libatomic").
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import timeit

from benchmarks.bench_paths import access_comparisons, region_comparisons
from benchmarks.common import Case, Comparison


def _comparison(operation: str) -> Comparison:
    access, _ = access_comparisons()
    for comparisons in (access, None):  # the region rows' setup is long: only if needed
        for comparison in comparisons if comparisons is not None else region_comparisons():
            if comparison.operation == operation:
                return comparison
    raise SystemExit(f"no row {operation!r} in benchmarks.bench_paths")


def _run(operation: str, side: str, calls: int) -> None:
    """(child) Run `calls` operations of one side of a row."""
    case: Case = getattr(_comparison(operation), side)
    setup = "\n".join([*(f"{name} = globals()[{name!r}]" for name in case.namespace),
                       case.setup])
    timeit.Timer(case.stmt, setup, globals=case.namespace).timeit(
        max(1, calls // case.ops_per_stmt))


def _instructions(operation: str, side: str, calls: int) -> int:
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no",
               "--cachegrind-out-file=/dev/null", sys.executable, "-m",
               "benchmarks.instructions", "--child", side, "--calls", str(calls), operation]
    # One hash seed for every child: with random ones the same loop's count moves by
    # some 200 instructions an operation (dict layouts, and so the specialised paths).
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(command, capture_output=True, text=True, check=True,
                            env=environment)
    found = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from cachegrind:\n{result.stderr}")
    return int(found.group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("rows", nargs="+", metavar="ROW")
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--child", choices=("ours", "baseline"), help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.child:
        _run(arguments.rows[0], arguments.child, arguments.calls)
        return 0
    calls = arguments.calls
    print("| row | ours (instructions/op) | baseline (instructions/op) | ours - baseline |")
    print("|---|---:|---:|---:|")
    for operation in arguments.rows:
        per_op = {}
        for side in ("ours", "baseline"):
            extra = (_instructions(operation, side, 5 * calls)
                     - _instructions(operation, side, calls))
            per_op[side] = extra / (4 * calls)
        print(f"| {operation} | {per_op['ours']:,.0f} | {per_op['baseline']:,.0f} | "
              f"{per_op['ours'] - per_op['baseline']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
