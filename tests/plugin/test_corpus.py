"""The plugin against a corpus of realistic device code (`corpus/*.yaml`): how many of the
mistakes it catches with the right error code, and that it reports nothing on correct
code, on a 64-bit target and two 32-bit ones (i686 with 8-byte atomics, riscv32 without).

Each case is device code written as its authors would; a line holding a mistake ends with
`# mistake: <code>` (or `# mistake[<targets>]: <code>` where only some targets make it one).
One mypy run per target checks every case. A mistake is caught when mypy reports an error
with that code on its line; an error on any other line is a false report. The target
rate is 95 % caught with no false report; without the plugin the same corpus must score
far below it (the control: the figure measures the plugin).

`python tests/plugin/test_corpus.py` prints the figures.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

CORPUS: Final = Path(__file__).resolve().parent / "corpus"
TARGETS: Final = ("x86_64", "i686", "riscv32")
TARGET_RATE: Final = 0.95
MARK: Final = re.compile(r"\s*# mistake(?:\[(?P<targets>[\w,]+)\])?: (?P<code>[\w-]+)\s*$")
ERROR: Final = re.compile(r"^(?P<module>[\w/]+)\.py:(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$")


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    main: str
    files: dict[str, str]

    @property
    def module(self) -> str:
        return f"corpus_{self.name}"


def load_corpus() -> list[Case]:
    cases: list[Case] = []
    for path in sorted(CORPUS.glob("*.yaml")):
        entries: list[dict[str, Any]] = yaml.safe_load(path.read_text())
        for entry in entries:
            files = {item["path"]: item["content"] for item in entry.get("files", [])}
            cases.append(Case(path.stem, entry["case"], entry["main"], files))
    return cases


def mistakes(case: Case, target: str) -> set[tuple[int, str]]:
    """(line, code) of each mistake the case marks for `target`."""
    marked: set[tuple[int, str]] = set()
    for number, text in enumerate(case.main.splitlines(), 1):
        mark = MARK.search(text)
        if mark and (mark["targets"] is None or target in mark["targets"].split(",")):
            marked.add((number, mark["code"]))
    return marked


def write_case(case: Case, folder: Path) -> Path:
    """The case as modules of its own: `corpus_<case>.py`, and its other files renamed
    `corpus_<case>_<module>.py` with the imports of them rewritten (lines unchanged)."""
    main = case.main
    for name, content in case.files.items():
        module = name.removesuffix(".py")
        renamed = f"{case.module}_{module}"
        (folder / f"{renamed}.py").write_text(content)
        main = re.sub(rf"^from {module} import", f"from {renamed} import", main, flags=re.M)
        main = re.sub(rf"^import {module}$", f"import {renamed} as {module}", main, flags=re.M)
    path = folder / f"{case.module}.py"
    path.write_text(main)
    return path


@dataclass
class Score:
    mistakes: int
    caught: int
    missed: list[str]
    false_reports: list[str]

    @property
    def rate(self) -> float:
        return self.caught / self.mistakes if self.mistakes else 1.0


def score(cases: list[Case], target: str, *, plugin: bool = True) -> Score:
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        paths = [write_case(case, folder) for case in cases]
        config = folder / "mypy.ini"
        config.write_text("[mypy]\nstrict = True\n" + (
            f"plugins = vm_memory_mypy.plugin\n\n[vm_memory_mypy]\ntarget = {target}\n"
            if plugin else ""))
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir",
             str(folder / "cache"), "--no-pretty", "--show-error-codes",
             *(path.name for path in paths)],
            cwd=folder, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    reported: set[tuple[str, int, str]] = {
        (match["module"], int(match["line"]), match["code"])
        for match in map(ERROR.match, result.stdout.splitlines()) if match}
    total = caught = 0
    missed: list[str] = []
    expected_lines: set[tuple[str, int]] = set()
    for case in cases:
        for line, code in sorted(mistakes(case, target)):
            total += 1
            expected_lines.add((case.module, line))
            if (case.module, line, code) in reported:
                caught += 1
            else:
                missed.append(f"{case.category}/{case.name}:{line} {code}")
    false_reports = sorted(f"{module}:{line} [{code}]" for module, line, code in reported
                           if (module, line) not in expected_lines)
    return Score(total, caught, missed, false_reports)


CASES: Final = load_corpus()


def test_the_corpus_has_five_cases_per_category_and_mistakes_on_every_target() -> None:
    categories: dict[str, int] = {}
    for case in CASES:
        categories[case.category] = categories.get(case.category, 0) + 1
    assert len(categories) >= 9
    assert min(categories.values()) >= 5, categories
    for target in TARGETS:
        assert sum(len(mistakes(case, target)) for case in CASES) >= 50


@pytest.mark.parametrize("target", TARGETS)
def test_the_plugin_catches_the_mistakes_and_nothing_else(target: str) -> None:
    result = score(CASES, target)
    assert result.false_reports == [], result.false_reports
    assert result.rate >= TARGET_RATE, (f"{result.caught}/{result.mistakes} caught; "
                                        f"missed: {result.missed}")


def test_without_the_plugin_the_same_corpus_scores_far_below() -> None:
    """The control: plain mypy sees few of these mistakes, so the figure above is the
    plugin's (and the scoring can fail)."""
    result = score(CASES, "x86_64", plugin=False)
    assert result.rate < 0.5, result


def main() -> None:
    print("| target | mistakes | caught with the right code | rate | false reports |")
    print("|---|---:|---:|---:|---:|")
    for target in TARGETS:
        result = score(CASES, target)
        print(f"| {target} | {result.mistakes} | {result.caught} | {result.rate:.1%} | "
              f"{len(result.false_reports)} |")
        for item in result.missed + result.false_reports:
            print(f"    {item}")
    plain = score(CASES, "x86_64", plugin=False)
    print(f"| x86_64, plain mypy (control) | {plain.mistakes} | {plain.caught} | "
          f"{plain.rate:.1%} | {len(plain.false_reports)} |")


if __name__ == "__main__":
    main()
