"""A new user's view: the README's install command in a fresh virtual environment, then
mypy (with the plugin) and pyright on a project of their own outside the checkout.

The install line is read from the README, not copied, so the two cannot drift. The
checkers are the versions this suite runs with. Slow (one venv and one install for the
module), so it is marked `slow` — and still runs in the normal suite.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any, Final

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.type_checker]  # type checkers: not on foreign ports

ROOT: Final = Path(__file__).resolve().parent.parent
INSTALL: Final = re.compile(r"\S*python3? -m pip install -e \.(?=\s|$)")

USER_CODE: Final = '''\
import ctypes

from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap, Le32, Le64


class Descriptor(ctypes.Structure):
    _fields_ = (("addr", Le64), ("len", Le32))


memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x10000)])
counter = AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(0x100))
reveal_type(memory.read_atomic(AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(8))))
memory.fetch_add(counter, 1)
memory.write_slice(GuestAddress(0), "not a buffer")
descriptor = memory.read_obj(AlignedGuestAddress.new(Descriptor, GuestAddress(0x200)))
reveal_type(descriptor.len)
'''
"""Line 12 reveals int; line 13 is too wide for riscv32 (the plugin); line 14 passes a
str as a buffer (any checker); line 16 reveals the field type (the plugin)."""


def readme_install_command() -> str:
    """The README's `pip install -e .` (the first set-up command, without extras)."""
    readme = (ROOT / "README.md").read_text()
    for block in re.findall(r"```(?:sh|bash|console)\n(.*?)```", readme, flags=re.DOTALL):
        for segment in re.split(r"&&|\n|;", block):
            found = INSTALL.search(segment)
            if found:
                return found.group(0)
    raise AssertionError("the README has no `python3 -m pip install -e .` command")


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(a user's project directory, the environment that runs the fresh venv's tools)."""
    base = tmp_path_factory.mktemp("user-install")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("PYTHONPATH", "VIRTUAL_ENV", "MYPYPATH")}
    environment["PATH"] = os.pathsep.join([str(venv / "bin"), environment.get("PATH", "")])
    environment["VIRTUAL_ENV"] = str(venv)
    # The README's command as written, run by this fresh environment's interpreter
    # (the README names its own `.venv`).
    interpreter, *arguments = shlex.split(readme_install_command())
    assert Path(interpreter).name.startswith("python"), interpreter
    install = subprocess.run([str(venv / "bin" / "python"), *arguments], cwd=ROOT,
                             env=environment, capture_output=True, text=True, timeout=900,
                             check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    tools = subprocess.run(
        ["python3", "-m", "pip", "install", "--quiet", f"mypy=={version('mypy')}",
         f"pyright[nodejs]=={version('pyright')}"], env=environment, capture_output=True,
        text=True, timeout=900, check=False)
    assert tools.returncode == 0, tools.stdout + tools.stderr
    project = base / "project"
    project.mkdir()
    (project / "app.py").write_text(USER_CODE)
    return project, environment


def run(command: list[str], project: Path,
        environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=project, env=environment, capture_output=True,
                          text=True, timeout=600, check=False)


def test_the_install_command_comes_from_the_readme() -> None:
    assert INSTALL.search(readme_install_command())


def test_mypy_with_the_plugin_sees_the_library_from_outside(
        user: tuple[Path, dict[str, str]]) -> None:
    project, environment = user
    (project / "mypy.ini").write_text("[mypy]\nstrict = True\nplugins = vm_memory_mypy.plugin\n"
                                      "\n[vm_memory_mypy]\ntarget = riscv32\n")
    result = run(["python3", "-m", "mypy", "--no-pretty", "app.py"], project, environment)
    lines = result.stdout.splitlines()
    assert 'app.py:12: note: Revealed type is "int"' in lines, result.stdout
    assert 'app.py:16: note: Revealed type is "int"' in lines, result.stdout
    errors = [line for line in lines if ": error: " in line]
    assert [line.split(":")[1] for line in errors] == ["13", "14"], result.stdout
    assert errors[0].endswith("[vm-memory-atomic-width]"), result.stdout


def test_pyright_sees_the_library_from_outside(user: tuple[Path, dict[str, str]]) -> None:
    project, environment = user
    (project / "pyrightconfig.json").write_text(json.dumps({"typeCheckingMode": "strict"}))
    result = run(["python3", "-m", "pyright", "--outputjson", "app.py"], project, environment)
    report: dict[str, Any] = json.loads(result.stdout)
    diagnostics = [(item["severity"], item["range"]["start"]["line"] + 1, item["message"])
                   for item in report["generalDiagnostics"]]
    assert [line for severity, line, _ in diagnostics if severity == "error"] == [14], \
        diagnostics
    assert any(line == 12 and message.endswith('is "int"')
               for severity, line, message in diagnostics if severity == "information")


def test_the_plugin_imports_from_outside(user: tuple[Path, dict[str, str]]) -> None:
    project, environment = user
    result = run(["python3", "-c", "import vm_memory_mypy.plugin, vm_memory; "
                  "print(vm_memory.__file__)"], project, environment)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(ROOT)
