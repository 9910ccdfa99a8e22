"""The whole performance table in one command: `python -m benchmarks.run_all`.

Plain access (issue 2), atomics and aligned access (issue 3), stream I/O and dirty
tracking (issue 5) and, when installed, the
Python alternatives (unicorn, the `atomics` package), each as a ratio to a raw baseline
measured in the same run on the same memory, on the access path this process runs
(`VM_MEMORY_PURE=1` for the pure one; `python -m benchmarks.bench_paths` puts both side
by side). Prints Markdown; `--json FILE` also writes
the figures machine-readable; `--quick` is a fast smoke run with rough figures.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.bench_access import access_comparisons
from benchmarks.bench_atomics import atomic_comparisons
from benchmarks.bench_io import io_comparisons
from benchmarks.common import FULL, QUICK, measure, report, write_json
from vm_memory import access_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help="a fast smoke run: fewer, shorter samples (rough figures)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    arguments = parser.parse_args(argv)
    settings = QUICK if arguments.quick else FULL
    access, access_skipped = access_comparisons()
    atomic, atomic_skipped = atomic_comparisons()
    io, io_skipped = io_comparisons()
    rows = measure(access + atomic + io, settings)
    skipped = access_skipped + atomic_skipped + io_skipped
    title = f"vm-memory performance, {access_path().name} path: ratios to raw baselines"
    print(report(title, rows, skipped, settings))
    missed = [row.operation for row in rows if row.within_target is False]
    print()
    print(f"{len(rows)} rows, {sum(row.target is not None for row in rows)} with a target, "
          f"{len(missed)} outside it" + (f": {', '.join(missed)}" if missed else "") + ".")
    if arguments.json:
        write_json(arguments.json, rows, skipped, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
