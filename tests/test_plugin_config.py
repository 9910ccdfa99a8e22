"""The plugin's configuration, checked by real mypy (and dmypy) runs: the TOML form of
its section, refused settings, the incremental cache and the daemon following a change
of target, and the documented table of targets matching the one the plugin uses.

The checks themselves are the YAML cases in tests/plugin/ (INI form of the section).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest
import vm_memory_mypy.targets as targets_module
from vm_memory_mypy import MINIMUM_MYPY
from vm_memory_mypy.targets import ARCHITECTURES, make_target

pytestmark = pytest.mark.type_checker  # not in the runtime suite run on foreign ports

ROOT: Final = Path(__file__).resolve().parent.parent
ERROR_LINE: Final = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$")

WIDE_ATOMICS: Final = '''\
import ctypes
from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap

memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x1000)])
quad = AlignedGuestAddress.new(ctypes.c_uint64, 0x100)
memory.read_atomic(quad)
memory.fetch_add(quad, 1)
memory.read_atomic(AlignedGuestAddress.new(ctypes.c_uint32, 0x108))
'''
Verdict = set[tuple[int, str]]
WIDE_ATOMIC_ERRORS: Final[Verdict] = {(6, "vm-memory-atomic-width"),
                                      (7, "vm-memory-atomic-width")}
NO_ERRORS: Final[Verdict] = set()


def mypy_environment() -> dict[str, str]:
    """mypy finds vm_memory and imports the plugin from this checkout, installed or not."""
    environment = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "mypy_plugin")]
    environment["PYTHONPATH"] = os.pathsep.join(
        [*paths, environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else paths)
    environment["MYPYPATH"] = str(ROOT)
    return environment


def run_mypy(config: Path, source: Path, cache: Path,
             python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(cache),
         "--show-error-codes", "--no-pretty", str(source)],
        cwd=source.parent, capture_output=True, text=True, env=mypy_environment(),
        timeout=600, check=False)


def errors(output: str) -> Verdict:
    """(line, code) of every error mypy reported."""
    return {(int(match["line"]), match["code"])
            for match in map(ERROR_LINE.match, output.splitlines()) if match}


def ini_config(directory: Path, section: str) -> Path:
    config = directory / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\nplugins = vm_memory_mypy.plugin\n\n"
                      f"[vm_memory_mypy]\n{section}\n")
    return config


@pytest.fixture
def wide_atomics(tmp_path: Path) -> Path:
    source = tmp_path / "wide.py"
    source.write_text(WIDE_ATOMICS)
    return source


@pytest.mark.parametrize(("target", "expected"), [("mips", WIDE_ATOMIC_ERRORS),
                                                  ("aarch64", NO_ERRORS)])
def test_the_toml_section_selects_the_target(
        target: str, expected: Verdict, wide_atomics: Path,
        tmp_path: Path) -> None:
    """`[tool.vm_memory_mypy]` in a pyproject.toml (mypy's own TOML form)."""
    config = tmp_path / "pyproject.toml"
    config.write_text('[tool.mypy]\nstrict = true\nplugins = ["vm_memory_mypy.plugin"]\n\n'
                      f'[tool.vm_memory_mypy]\ntarget = "{target}"\nos = "linux"\n')
    result = run_mypy(config, wide_atomics, tmp_path / "cache")
    assert errors(result.stdout) == expected, result.stdout + result.stderr
    assert result.returncode == (1 if expected else 0)


@pytest.mark.parametrize(("section", "complaint"), [
    ("target = vax", "unknown target 'vax'; expected one of x86_64, aarch64, i686"),
    ("target = x86_64\nos = plan9", "unknown os 'plan9'"),
    ("target = i686\ndata_model = LP64", "i686 has 4-byte pointers: its data model is ILP32"),
    ("target = x86_64\ndata_model = ILP64", "unknown data_model 'ILP64'"),
    ("arch = x86_64", "unknown keys: arch; expected target, os, data_model"),
])
def test_a_bad_section_stops_mypy_and_says_what_is_accepted(
        section: str, complaint: str, wide_atomics: Path, tmp_path: Path) -> None:
    result = run_mypy(ini_config(tmp_path, section), wide_atomics, tmp_path / "cache")
    assert result.returncode == 2, result.stdout + result.stderr
    assert complaint in result.stderr, result.stderr


def test_changing_the_target_changes_an_incremental_verdict(
        wide_atomics: Path, tmp_path: Path) -> None:
    """Same cache directory, new target: the cached verdict is not reused."""
    cache = tmp_path / "cache"
    verdicts: list[Verdict] = []
    for target in ("riscv32", "x86_64", "riscv32"):
        result = run_mypy(ini_config(tmp_path, f"target = {target}"), wide_atomics, cache)
        verdicts.append(errors(result.stdout))
    assert verdicts == [WIDE_ATOMIC_ERRORS, NO_ERRORS, WIDE_ATOMIC_ERRORS]


def test_the_daemon_follows_a_change_of_target(wide_atomics: Path, tmp_path: Path) -> None:
    """dmypy keeps its state between runs: the plugin's `__version__` carries a digest of
    the target, so the daemon restarts when the section changes."""
    status = tmp_path / "dmypy.json"
    daemon = [sys.executable, "-m", "mypy.dmypy", "--status-file", str(status)]
    verdicts: list[Verdict] = []
    try:
        for target in ("mips", "x86_64", "mips"):
            config = ini_config(tmp_path, f"target = {target}")
            result = subprocess.run(
                [*daemon, "run", "--", "--config-file", str(config), "--show-error-codes",
                 "--no-pretty", str(wide_atomics)],
                cwd=tmp_path, capture_output=True, text=True, env=mypy_environment(),
                timeout=600, check=False)
            verdicts.append(errors(result.stdout))
    finally:
        subprocess.run([*daemon, "stop"], cwd=tmp_path, capture_output=True,
                       env=mypy_environment(), timeout=120, check=False)
    assert verdicts == [WIDE_ATOMIC_ERRORS, NO_ERRORS, WIDE_ATOMIC_ERRORS]


def test_the_version_carries_a_digest_of_the_configuration(tmp_path: Path) -> None:
    """What dmypy compares: equal for equal targets, different otherwise."""
    code = ("import sys\nimport mypy.build\nfrom mypy.options import Options\n"
            "import vm_memory_mypy.plugin as plugin\n"
            "options = Options()\noptions.config_file = sys.argv[1]\n"
            "plugin.VmMemoryPlugin(options)\nprint(plugin.__version__)\n")
    versions: list[str] = []
    for name, section in (("a", "target = x86_64"), ("b", "target = riscv32"),
                          ("c", "target = x86_64\nos = linux\ndata_model = LP64")):
        config = tmp_path / f"{name}.ini"
        config.write_text(f"[vm_memory_mypy]\n{section}\n")
        result = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True,
                                text=True, env=mypy_environment(), timeout=120, check=True)
        versions.append(result.stdout.strip())
    assert versions[0] != versions[1]
    assert versions[0] == versions[2]
    assert all(re.fullmatch(r"\d+\.\d+\.\d+\+[0-9a-f]{12}", version) for version in versions)


def documented_table() -> dict[str, tuple[int, int, str]]:
    """target -> (pointer size, atomic width, long double) from the module docstring."""
    rows: dict[str, tuple[int, int, str]] = {}
    for line in (targets_module.__doc__ or "").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[2].isdigit():
            rows[cells[0]] = (int(cells[2]), int(cells[3]), cells[4].split()[0])
    return rows


def test_the_documented_table_is_the_one_the_plugin_uses() -> None:
    table = documented_table()
    assert set(table) == set(ARCHITECTURES)
    for name, architecture in ARCHITECTURES.items():
        linux = make_target(name, "linux")
        assert table[name] == (architecture.pointer_size, architecture.atomic_width,
                               f"{linux.long_double_size}/{linux.long_double_alignment}")


@pytest.mark.parametrize(("architecture", "system", "model", "long_size"), [
    ("x86_64", "linux", "LP64", 8), ("x86_64", "windows", "LLP64", 4),
    ("aarch64", "macos", "LP64", 8), ("i686", "linux", "ILP32", 4),
    ("riscv32", "linux", "ILP32", 4), ("s390x", "linux", "LP64", 8),
])
def test_the_data_model_follows_architecture_and_os(
        architecture: str, system: str, model: str, long_size: int) -> None:
    target = make_target(architecture, system)
    assert (target.data_model, target.long_size) == (model, long_size)


@pytest.mark.long
def test_the_oldest_supported_mypy_gives_the_same_verdicts(
        wide_atomics: Path, tmp_path: Path) -> None:
    """`MINIMUM_MYPY`, installed in a fresh virtual environment, gives the same verdicts."""
    environment = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(environment)], check=True)
    python = str(environment / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", f"mypy=={MINIMUM_MYPY}"],
                   check=True, timeout=600)
    for target, expected in (("riscv32", WIDE_ATOMIC_ERRORS), ("x86_64", NO_ERRORS)):
        result = run_mypy(ini_config(tmp_path, f"target = {target}"), wide_atomics,
                          tmp_path / f"cache-{target}", python)
        assert errors(result.stdout) == expected, result.stdout + result.stderr
