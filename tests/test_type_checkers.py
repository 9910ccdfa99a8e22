"""The API under every checker the project supports, without the plugin and with it:
mypy (plain and with the plugin), pyright (what Pylance runs), pyrefly and ty.

`typing_cases/accepted.py` is correct code: every checker must accept it. Each line of
`typing_cases/rejected.py` shows one guarantee (`# rejected[<guarantee>]`); a checker keeps
a guarantee when it reports an error on each of its lines. What each checker keeps is
measured here and must be what the README's table of checkers says; no checker may report
an error on an unmarked line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest

pytestmark = pytest.mark.type_checker  # not in the runtime suite run on foreign ports

ROOT: Final = Path(__file__).resolve().parent.parent
CASES: Final = ROOT / "tests" / "typing_cases"
ACCEPTED: Final = CASES / "accepted.py"
REJECTED: Final = CASES / "rejected.py"
README: Final = ROOT / "README.md"
MARK: Final = re.compile(r"# rejected\[(?P<guarantee>[\w-]+)\]")
MYPY_ERROR: Final = re.compile(r"^[^:]+:(?P<line>\d+): error: ")
TY_ERROR: Final = re.compile(r"^[^:]+:(?P<line>\d+):\d+: error\[")
PYREFLY_ERROR: Final = re.compile(r"^ERROR [^:]+:(?P<line>\d+):")


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                          check=False)


def matched_lines(pattern: re.Pattern[str], output: str) -> set[int]:
    return {int(match["line"]) for match in map(pattern.match, output.splitlines()) if match}


def mypy_lines(path: Path, tmp_path: Path, *, plugin: bool) -> set[int]:
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n"
                      + ("plugins = vm_memory_mypy.plugin\n" if plugin else ""))
    result = run([sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir",
                  str(tmp_path / "mypy-cache"), "--no-pretty", str(path)], tmp_path)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return matched_lines(MYPY_ERROR, result.stdout)


def pyright_lines(path: Path, tmp_path: Path) -> set[int]:
    config = tmp_path / "pyrightconfig.json"
    config.write_text(json.dumps({"typeCheckingMode": "strict", "pythonVersion": "3.11"}))
    result = run([sys.executable, "-m", "pyright", "--pythonpath", sys.executable, "--outputjson",
                  "-p", str(config), str(path)], tmp_path)
    report: dict[str, Any] = json.loads(result.stdout)
    return {diagnostic["range"]["start"]["line"] + 1
            for diagnostic in report["generalDiagnostics"]
            if diagnostic["severity"] == "error"}


def ty_lines(path: Path, tmp_path: Path) -> set[int]:
    result = run([sys.executable, "-m", "ty", "check", "--python", sys.executable,
                  "--output-format", "concise", str(path)], tmp_path)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return matched_lines(TY_ERROR, result.stdout)


def pyrefly_lines(path: Path, tmp_path: Path) -> set[int]:
    result = run([sys.executable, "-m", "pyrefly", "check", "--python-interpreter-path",
                  sys.executable, "--output-format", "min-text", str(path)], tmp_path)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return matched_lines(PYREFLY_ERROR, result.stdout)


CHECKERS: Final[dict[str, Callable[[Path, Path], set[int]]]] = {
    "mypy + plugin": lambda path, tmp: mypy_lines(path, tmp, plugin=True),
    "mypy": lambda path, tmp: mypy_lines(path, tmp, plugin=False),
    "pyright (Pylance)": pyright_lines,
    "pyrefly": pyrefly_lines,
    "ty": ty_lines,
}
CORRECT_CODE: Final = "correct code checks clean"


def marked_lines() -> dict[str, set[int]]:
    """guarantee -> the lines of rejected.py that show it."""
    lines: dict[str, set[int]] = {}
    for number, text in enumerate(REJECTED.read_text().splitlines(), 1):
        mark = MARK.search(text)
        if mark:
            lines.setdefault(mark["guarantee"], set()).add(number)
    return lines


def verdict(reported: set[int], lines: set[int]) -> str:
    caught = len(reported & lines)
    return "yes" if caught == len(lines) else ("no" if caught == 0 else "partly")


def readme_table() -> dict[str, dict[str, str]]:
    """Row name -> {checker: cell} of the README's table of checkers."""
    table: dict[str, dict[str, str]] = {}
    header: list[str] | None = None
    for line in README.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| guarantee |"):
            header = cells
        elif header is not None and line.startswith("|") and len(cells) == len(header):
            if set(cells[0]) <= {"-", ":"}:
                continue
            key = re.match(r"`([\w-]+)`", cells[0])
            name = key.group(1) if key else cells[0]
            table[name] = {checker: cell.split()[0] for checker, cell in
                           zip(header[1:], cells[1:], strict=True)}
        elif header is not None and not line.startswith("|"):
            header = None if table else header
    return table


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Row name -> {checker: "yes" | "no" | "partly"}, from running every checker."""
    marks = marked_lines()
    every_mark = {line for lines in marks.values() for line in lines}
    rows: dict[str, dict[str, str]] = {CORRECT_CODE: {}, **{key: {} for key in marks}}
    for checker, lines_of in CHECKERS.items():
        work = tmp_path_factory.mktemp(re.sub(r"\W+", "-", checker))
        accepted = lines_of(ACCEPTED, work)
        rows[CORRECT_CODE][checker] = "yes" if not accepted else f"no {sorted(accepted)}"
        rejected = lines_of(REJECTED, work)
        assert not rejected - every_mark, f"{checker} rejects unmarked lines " \
            f"{sorted(rejected - every_mark)}"
        for key, lines in marks.items():
            rows[key][checker] = verdict(rejected, lines)
    return rows


def test_every_checker_accepts_correct_code(measured: dict[str, dict[str, str]]) -> None:
    assert measured[CORRECT_CODE] == dict.fromkeys(CHECKERS, "yes")


def test_mypy_and_pyright_keep_every_guarantee_of_the_type_system(
        measured: dict[str, dict[str, str]]) -> None:
    """The checkers the project is developed with keep all of them, plugin or not."""
    for key, row in measured.items():
        for checker in ("mypy + plugin", "mypy", "pyright (Pylance)"):
            assert row[checker] == "yes", (key, checker, row)


def test_the_readme_table_says_what_each_checker_keeps(
        measured: dict[str, dict[str, str]]) -> None:
    table = readme_table()
    assert {key: table.get(key) for key in measured} == measured


def test_the_verdict_can_say_no() -> None:
    """The control: a checker missing one line of a guarantee does not keep it."""
    assert verdict({24, 25}, {24, 25, 26}) == "partly"
    assert verdict(set(), {24}) == "no"
    assert verdict({24}, {24}) == "yes"
