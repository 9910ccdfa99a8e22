"""The repository type-checks and lints clean: mypy --strict (with the plugin), pyright
strict and ruff, each run for real over the whole tree as configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.type_checker  # not in the runtime suite run on foreign ports

ROOT = Path(__file__).resolve().parent.parent

CHECKERS = {
    "mypy": [sys.executable, "-m", "mypy"],
    "pyright": [sys.executable, "-m", "pyright"],
    "ruff": [sys.executable, "-m", "ruff", "check", "."],
}


@pytest.mark.parametrize("checker", sorted(CHECKERS))
def test_repository_is_clean(checker: str) -> None:
    result = subprocess.run(CHECKERS[checker], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, f"{checker} found problems:\n{result.stdout}{result.stderr}"
