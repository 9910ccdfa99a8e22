"""The whole performance table in one command: `python -m benchmarks.run_all`.

Plain access (issue 2), atomics and aligned access (issue 3), stream I/O and dirty
tracking (issue 5) and, when installed, the Python alternatives (unicorn, the `atomics`
package), each as a ratio to a raw baseline measured in the same run on the same memory.
Each access path runs in its own child process (the compiled one, and the pure one with
`VM_MEMORY_PURE=1`), each against baselines measured in that process, and the two are
printed side by side. Prints Markdown; `--json FILE` also writes both paths' figures;
`--quick` is a fast smoke run with rough figures.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.bench_access import access_comparisons
from benchmarks.bench_atomics import atomic_comparisons
from benchmarks.bench_io import io_comparisons
from benchmarks.common import (
    FULL,
    QUICK,
    Settings,
    child_document,
    describe_run,
    measure,
    path_note,
    run_in_path,
    side_by_side_table,
)


def child(settings: Settings) -> dict[str, object]:
    """Every row measured on the path this process runs."""
    access, access_skipped = access_comparisons()
    atomic, atomic_skipped = atomic_comparisons()
    io, io_skipped = io_comparisons()
    rows = measure(access + atomic + io, settings)
    return child_document(rows, access_skipped + atomic_skipped + io_skipped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help="a fast smoke run: fewer, shorter samples (rough figures)")
    parser.add_argument("--json", metavar="FILE", help="also write both paths' results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    settings = QUICK if arguments.quick else FULL
    if arguments.child:
        print(json.dumps(child(settings)))
        return 0
    compiled = run_in_path("benchmarks.run_all", False, arguments.quick)
    pure = run_in_path("benchmarks.run_all", True, arguments.quick)
    print("## vm-memory performance: ratios to raw baselines, both access paths\n")
    print(describe_run(settings) + "; each path in its own process, every ratio to the "
          "baseline measured in that process.")
    print("ratio: for times, ours / baseline (lower is better); for bulk copies (target ≥), "
          "baseline time / ours = the fraction of raw bandwidth reached.\n")
    print(path_note(compiled), end="")
    print(side_by_side_table(compiled, pure))
    for side in (compiled, pure):
        missed = [row["operation"] for row in side["rows"] if row["within_target"] is False]
        with_target = sum(row["target"] is not None for row in side["rows"])
        print(f"\n{side['path']} path: {len(side['rows'])} rows, {with_target} with a target, "
              f"{len(missed)} outside it" + (f": {', '.join(missed)}" if missed else "") + ".")
    if arguments.json:
        with open(arguments.json, "w", encoding="utf-8") as stream:
            json.dump({"compiled": compiled, "pure": pure}, stream, indent=2)
            stream.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
