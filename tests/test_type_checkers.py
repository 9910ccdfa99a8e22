"""The API without the plugin: plain mypy and pyright (strict) accept correct code with
zero errors and reject what the type system can express alone (`typing_cases/`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest
from test_plugin_config import errors, mypy_environment

pytestmark = pytest.mark.type_checker  # not in the runtime suite run on foreign ports

ROOT: Final = Path(__file__).resolve().parent.parent
CASES: Final = ROOT / "tests" / "typing_cases"
ACCEPTED: Final = CASES / "accepted.py"
REJECTED: Final = CASES / "rejected.py"


def rejected_lines() -> set[int]:
    return {number for number, text in enumerate(REJECTED.read_text().splitlines(), 1)
            if "# rejected" in text}


def mypy_lines(path: Path, tmp_path: Path, *, plugin: bool) -> set[int]:
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n"
                      + ("plugins = vm_memory_mypy.plugin\n" if plugin else ""))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir",
         str(tmp_path / "cache"), "--show-error-codes", "--no-pretty", str(path)],
        capture_output=True, text=True, env=mypy_environment(), timeout=600, check=False)
    assert "error:" in result.stdout or result.returncode == 0, result.stdout + result.stderr
    return {line for line, _ in errors(result.stdout)}


def pyright_lines(path: Path, tmp_path: Path) -> set[int]:
    config = tmp_path / "pyrightconfig.json"
    config.write_text(json.dumps({"typeCheckingMode": "strict", "pythonVersion": "3.11",
                                  "extraPaths": [str(ROOT)]}))
    result = subprocess.run(
        [sys.executable, "-m", "pyright", "--outputjson", "-p", str(config), str(path)],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    report: dict[str, Any] = json.loads(result.stdout)
    return {diagnostic["range"]["start"]["line"] + 1
            for diagnostic in report["generalDiagnostics"]
            if diagnostic["severity"] == "error"}


def test_plain_mypy_accepts_correct_code(tmp_path: Path) -> None:
    assert mypy_lines(ACCEPTED, tmp_path, plugin=False) == set()


def test_mypy_with_the_plugin_accepts_correct_code(tmp_path: Path) -> None:
    assert mypy_lines(ACCEPTED, tmp_path, plugin=True) == set()


def test_pyright_accepts_correct_code(tmp_path: Path) -> None:
    assert pyright_lines(ACCEPTED, tmp_path) == set()


def test_plain_mypy_rejects_exactly_the_marked_lines(tmp_path: Path) -> None:
    assert mypy_lines(REJECTED, tmp_path, plugin=False) == rejected_lines()


def test_pyright_rejects_exactly_the_marked_lines(tmp_path: Path) -> None:
    assert pyright_lines(REJECTED, tmp_path) == rejected_lines()
