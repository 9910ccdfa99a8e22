"""`python -m tests.ports [ARCH ...] [--jobs N] [--core]`: build the roots, run the runtime suite
and the table check on each architecture, print passed/failed/skipped per architecture
with the reasons of skips, and the cost (build, run, CPU). Exit 1 unless all is green."""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from vm_memory_mypy.targets import make_target

from .architectures import BY_NAME, PORTS
from .facts import disagreements, probe
from .roots import ensure_root, ensure_test_packages
from .suite import foreign_environment, run_suite


def one(name: str, scope: str) -> tuple[bool, str]:
    port = BY_NAME[name]
    started = time.monotonic()
    root = ensure_root(port)
    built = time.monotonic() - started
    site = ensure_test_packages()
    found = disagreements(make_target(port.target, "linux"),
                          probe([str(root.python)], foreign_environment(root, site)))
    table = (f"  table: the plugin's {port.target} row "
             + ("agrees" if not found else "DISAGREES: " + "; ".join(map(str, found))))
    result = run_suite(root, site, scope=scope)
    return (result.green and not found,
            f"{result.summary()}\n{table}\n  root: {built:.0f} s to build or reuse")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.ports", description=__doc__)
    parser.add_argument("architectures", nargs="*", choices=list(BY_NAME), default=[],
                        help="Debian architectures (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="architectures run at once")
    parser.add_argument("--core", action="store_true",
                        help="emulated ports run only the suite's CORE files (as CI does)")
    arguments = parser.parse_args()
    names = arguments.architectures or [port.debian for port in PORTS]
    scope = "core" if arguments.core else "full"
    started = time.monotonic()
    with ThreadPoolExecutor(arguments.jobs) as pool:
        outcomes = list(pool.map(one, names, [scope] * len(names)))
    for _, text in outcomes:
        print(text, flush=True)
    print(f"{len(names)} architectures in {time.monotonic() - started:.0f} s")
    return 0 if all(green for green, _ in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
