"""The plugin's configuration across mypy runs, which a YAML case (one mypy run with an
INI config) cannot express: the TOML form of its section (pytest-mypy-plugins drops it),
refused settings, the incremental cache and the daemon after a change of target, the
table of targets, and the oldest supported mypy.

The checks themselves are the YAML cases beside this file.
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

ROOT: Final = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.type_checker  # not in the runtime suite run on foreign ports
ERROR_LINE: Final = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$")

WIDE_ATOMICS: Final = '''\
import ctypes
from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap

memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x1000)])
quad = AlignedGuestAddress.new(ctypes.c_uint64, GuestAddress(0x100))
memory.read_atomic(quad)
memory.fetch_add(quad, 1)
memory.read_atomic(AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(0x108)))
'''
Verdict = set[tuple[int, str]]
WIDE_ATOMIC_ERRORS: Final[Verdict] = {(6, "vm-memory-atomic-width"),
                                      (7, "vm-memory-atomic-width")}
NO_ERRORS: Final[Verdict] = set()


def mypy_environment() -> dict[str, str]:
    """For a Python without this project installed (the oldest-mypy run): the same two
    directories the editable install's .pth file adds."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "mypy_plugin")])
    return environment


def run_mypy(config: Path, source: Path, cache: Path, python: str = sys.executable,
             environment: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(cache),
         "--show-error-codes", "--no-pretty", str(source)],
        cwd=source.parent, capture_output=True, text=True, env=environment, timeout=600,
        check=False)


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


LAYOUT: Final = '''\
import ctypes
import enum
from typing import Final

MMIO_BASE: Final = 0xD000_0000


class Reg(enum.IntEnum):
    STATUS = 0x12


class Linked(ctypes.Structure):
    _fields_ = (("value", ctypes.c_uint32), ("next", ctypes.c_void_p))
'''
USES_LAYOUT: Final = '''\
import ctypes
from vm_memory import AlignedGuestAddress, GuestAddress
from layout import MMIO_BASE, Linked, Reg

AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(MMIO_BASE + Reg.STATUS))
AlignedGuestAddress.new(Linked, GuestAddress(MMIO_BASE))
'''


def test_another_modules_facts_give_the_same_verdict_from_a_warm_cache(
        tmp_path: Path) -> None:
    """Constants and Structure fields of a module loaded from the incremental cache
    (which keeps no syntax tree) give the verdict a cold run gives."""
    (tmp_path / "layout.py").write_text(LAYOUT)
    source = tmp_path / "uses.py"
    source.write_text(USES_LAYOUT)
    config = ini_config(tmp_path, "target = x86_64")
    cold = run_mypy(config, source, tmp_path / "cache")
    source.write_text(USES_LAYOUT + "# edited: this module is checked again, layout is not\n")
    warm = run_mypy(config, source, tmp_path / "cache")
    assert errors(cold.stdout) == {(5, "vm-memory-misaligned"), (6, "vm-memory-byte-valued")}
    assert errors(warm.stdout) == errors(cold.stdout), warm.stdout


def daemon_verdicts(command: str, source: Path, tmp_path: Path) -> list[Verdict]:
    """The daemon's verdicts on `source` as the target goes mips, x86_64, mips, asked
    with `dmypy run` or `dmypy check` (the daemon started by the first `run`)."""
    status = tmp_path / "dmypy.json"
    daemon = [sys.executable, "-m", "mypy.dmypy", "--status-file", str(status)]
    flags = ["--show-error-codes", "--no-pretty"]
    verdicts: list[Verdict] = []
    try:
        for step, target in enumerate(("mips", "x86_64", "mips")):
            config = ini_config(tmp_path, f"target = {target}")
            if step == 0 or command == "run":
                arguments = ["run", "--", "--config-file", str(config), *flags, str(source)]
            else:
                arguments = ["check", str(source)]
            result = subprocess.run([*daemon, *arguments], cwd=tmp_path, capture_output=True,
                                    text=True, timeout=600, check=False)
            verdicts.append(errors(result.stdout))
    finally:
        subprocess.run([*daemon, "stop"], cwd=tmp_path, capture_output=True, timeout=120,
                       check=False)
    return verdicts


def test_dmypy_run_follows_a_change_of_target(wide_atomics: Path, tmp_path: Path) -> None:
    """`dmypy run` compares the plugin's `__version__` (it carries a digest of the
    target) and restarts the daemon when the section changed."""
    assert daemon_verdicts("run", wide_atomics, tmp_path) == \
        [WIDE_ATOMIC_ERRORS, NO_ERRORS, WIDE_ATOMIC_ERRORS]


def test_dmypy_check_keeps_the_verdict_of_the_target_it_started_with(
        wide_atomics: Path, tmp_path: Path) -> None:
    """`dmypy check` re-reads no configuration (mypy's behaviour for its own options
    too): the README says so, and this shows it — the x86_64 step still reports mips."""
    assert daemon_verdicts("check", wide_atomics, tmp_path) == \
        [WIDE_ATOMIC_ERRORS, WIDE_ATOMIC_ERRORS, WIDE_ATOMIC_ERRORS]


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
                                text=True, timeout=120, check=True)
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
def test_the_oldest_supported_mypy_passes_the_yaml_suite(tmp_path: Path) -> None:
    """`MINIMUM_MYPY`, in a fresh virtual environment, passes every YAML case, and gives
    the same verdicts across a change of target."""
    environment = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(environment)], check=True)
    python = str(environment / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", f"mypy=={MINIMUM_MYPY}",
                    "pytest", "pytest-mypy-plugins", "hypothesis"], check=True, timeout=900)
    cases = sorted(str(path) for path in (ROOT / "tests" / "plugin").glob("test_*.yaml"))
    suite = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *cases],
                           cwd=ROOT, capture_output=True, text=True, timeout=3600,
                           env=mypy_environment(), check=False)
    assert suite.returncode == 0, suite.stdout[-20000:] + suite.stderr
    source = tmp_path / "wide.py"
    source.write_text(WIDE_ATOMICS)
    for target, expected in (("riscv32", WIDE_ATOMIC_ERRORS), ("x86_64", NO_ERRORS)):
        result = run_mypy(ini_config(tmp_path, f"target = {target}"), source,
                          tmp_path / f"cache-{target}", python, mypy_environment())
        assert errors(result.stdout) == expected, result.stdout + result.stderr
