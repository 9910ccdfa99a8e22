"""The repository type-checks and lints clean: mypy --strict (with the plugin), pyright
strict and ruff, each run for real over the whole tree as configured in pyproject.toml
(pyright told which interpreter, the suite runs without an activated venv, and which
project, so a configuration in a parent directory cannot widen it).

Each run keeps its caches in the test's own temporary directory: the suite runs in
parallel, and nothing it writes may be shared with another test (or the developer's
own checker runs in the checkout).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT

pytestmark = pytest.mark.type_checker  # not in the runtime suite run on foreign ports

CHECKERS = {
    "mypy": [sys.executable, "-m", "mypy", "--cache-dir", "{cache}"],
    "pyright": [sys.executable, "-m", "pyright", "--pythonpath", sys.executable, "-p", str(ROOT)],
    "ruff": [sys.executable, "-m", "ruff", "check", "--cache-dir", "{cache}", "."],
}


@pytest.mark.parametrize("checker", sorted(CHECKERS))
def test_repository_is_clean(checker: str, tmp_path: Path) -> None:
    command = [part.replace("{cache}", str(tmp_path / "cache")) for part in CHECKERS[checker]]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                            check=False)
    assert result.returncode == 0, f"{checker} found problems:\n{result.stdout}{result.stderr}"
