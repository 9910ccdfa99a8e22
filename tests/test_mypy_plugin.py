"""The mypy plugin, checked by real mypy runs.

Each file in `plugin_cases/` names the targets it is checked under (`# targets: ...`)
and marks every line that must fail with `# E: <code>` (or `# E[target,...]: <code>` for
some targets only). Each target is one mypy run over all its case files, configured in
INI form (the plugin's own `[vm_memory_mypy]` section); the errors reported must be
exactly the ones marked — a missing error and an extra one both fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Final

import pytest
from vm_memory_mypy import MINIMUM_MYPY

pytestmark = pytest.mark.type_checker  # not in the runtime suite run on foreign ports

ROOT: Final = Path(__file__).resolve().parent.parent
CASES: Final = ROOT / "tests" / "plugin_cases"
ERROR_LINE: Final = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$")
MARK: Final = re.compile(r"#\s*E(?:\[(?P<targets>[\w,]+)\])?:\s*(?P<code>[\w-]+)")
CHECK_CODES: Final = ("vm-memory-aligned-construction", "vm-memory-misaligned",
                      "vm-memory-atomic-type", "vm-memory-atomic-width",
                      "vm-memory-ordering", "vm-memory-byte-valued")

Expected = set[tuple[str, int, str]]


def case_targets(path: Path) -> list[str]:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# targets:"), f"{path.name} must start with '# targets:'"
    return first.split(":", 1)[1].split()


def expected_errors(path: Path, target: str) -> Expected:
    expected: Expected = set()
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        for mark in MARK.finditer(text):
            targets = mark.group("targets")
            if targets is None or target in targets.split(","):
                expected.add((path.name, number, mark.group("code")))
    return expected


def mypy_environment() -> dict[str, str]:
    """mypy imports the plugin and vm_memory from this checkout, installed or not."""
    environment = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "mypy_plugin")]
    if environment.get("PYTHONPATH"):
        paths.append(environment["PYTHONPATH"])
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    return environment


def run_mypy(config: Path, files: list[Path], cache: Path,
             python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "mypy", "--config-file", str(config), "--cache-dir",
         str(cache), "--show-error-codes", "--no-pretty", *map(str, files)],
        cwd=CASES, capture_output=True, text=True, env=mypy_environment(), timeout=600,
        check=False)


def reported_errors(output: str) -> Expected:
    errors: Expected = set()
    for line in output.splitlines():
        match = ERROR_LINE.match(line)
        if match:
            errors.add((Path(match.group("file")).name, int(match.group("line")),
                        match.group("code")))
    return errors


def ini_config(directory: Path, target: str) -> Path:
    config = directory / f"mypy-{target}.ini"
    config.write_text(f"[mypy]\nplugins = vm_memory_mypy.plugin\nstrict = True\n\n"
                      f"[vm_memory_mypy]\ntarget = {target}\n")
    return config


CASE_FILES: Final = sorted(CASES.glob("*.py"))
FILES_BY_TARGET: Final[dict[str, list[Path]]] = defaultdict(list)
for _path in CASE_FILES:
    for _target in case_targets(_path):
        FILES_BY_TARGET[_target].append(_path)


@pytest.mark.parametrize("target", sorted(FILES_BY_TARGET))
def test_plugin_reports_exactly_the_marked_errors(target: str, tmp_path: Path) -> None:
    files = FILES_BY_TARGET[target]
    result = run_mypy(ini_config(tmp_path, target), files, tmp_path / "cache")
    expected: Expected = set()
    for path in files:
        expected |= expected_errors(path, target)
    reported = reported_errors(result.stdout)
    assert reported == expected, (
        f"missing: {sorted(expected - reported)}\nunexpected: {sorted(reported - expected)}"
        f"\n{result.stdout}{result.stderr}")


def test_every_check_has_three_failing_and_three_passing_cases_on_two_targets() -> None:
    """The suite's own shape: each check is exercised enough to mean something."""
    for code in CHECK_CODES:
        files = [path for path in CASE_FILES if code in path.read_text()]
        assert files, f"no case for {code}"
        targets = {target for path in files for target in case_targets(path)}
        assert {"x86_64"} < targets, f"{code} needs a 64-bit and a 32-bit target"
        assert any(target in {"riscv32", "mips", "i686", "armv7"} for target in targets)
        failing = sum(text.count(f"E: {code}") + len(re.findall(rf"E\[[\w,]+\]: {code}", text))
                      for text in (path.read_text() for path in files))
        assert failing >= 3, f"{code}: {failing} failing cases"
        unmarked = sum(1 for path in files for line in path.read_text().splitlines()
                       if line and not line.startswith(("#", " ", '"', "class", "def",
                                                        "from", "import", ")"))
                       and "# E" not in line and "(" in line)
        assert unmarked >= 3, f"{code}: fewer than three passing near-misses"


def test_toml_configuration_selects_the_target(tmp_path: Path) -> None:
    """The `[tool.vm_memory_mypy]` table of a pyproject.toml is read too."""
    config = tmp_path / "pyproject.toml"
    config.write_text('[tool.mypy]\nplugins = ["vm_memory_mypy.plugin"]\nstrict = true\n\n'
                      '[tool.vm_memory_mypy]\ntarget = "mips"\n')
    case = CASES / "atomic_width.py"
    result = run_mypy(config, [case], tmp_path / "cache")
    assert reported_errors(result.stdout) == expected_errors(case, "mips"), result.stdout


def test_changing_the_target_changes_an_incremental_verdict(tmp_path: Path) -> None:
    """Same cache, new target: the plugin's reported config invalidates cached verdicts."""
    case = CASES / "atomic_width.py"
    cache = tmp_path / "cache"
    config = ini_config(tmp_path, "riscv32")
    first = run_mypy(config, [case], cache)
    assert reported_errors(first.stdout) == expected_errors(case, "riscv32") != set()
    config.write_text(config.read_text().replace("riscv32", "x86_64"))
    second = run_mypy(config, [case], cache)
    assert reported_errors(second.stdout) == set(), second.stdout
    config.write_text(config.read_text().replace("x86_64", "riscv32"))
    third = run_mypy(config, [case], cache)
    assert reported_errors(third.stdout) == expected_errors(case, "riscv32"), third.stdout


def test_each_code_silences_only_its_own_error(tmp_path: Path) -> None:
    source = tmp_path / "silenced.py"
    source.write_text(
        "import ctypes\n"
        "from vm_memory import AlignedGuestAddress, GuestAddress, GuestMemoryMmap, Ordering\n"
        "memory = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x1000)])\n"
        "quad = AlignedGuestAddress.new(ctypes.c_uint64, 0x100)\n"
        "memory.read_atomic(quad)  # type: ignore[vm-memory-atomic-width]\n"
        "memory.read_atomic(quad, Ordering.RELEASE)  # type: ignore[vm-memory-atomic-width]\n")
    result = run_mypy(ini_config(tmp_path, "riscv32"), [source], tmp_path / "cache")
    assert reported_errors(result.stdout) == {("silenced.py", 6, "vm-memory-ordering")}, \
        result.stdout


def test_an_unknown_target_is_refused_with_the_accepted_ones(tmp_path: Path) -> None:
    config = ini_config(tmp_path, "vax")
    result = run_mypy(config, [CASES / "ordering.py"], tmp_path / "cache")
    assert result.returncode != 0
    assert "unknown target 'vax'" in result.stdout + result.stderr
    assert "riscv32" in result.stdout + result.stderr


def test_plugin_version_carries_a_digest_of_the_target(tmp_path: Path) -> None:
    """dmypy restarts when a plugin's __version__ changes: it must follow the config."""
    code = (
        "import sys\n"
        "import mypy.build\n"
        "from mypy.options import Options\n"
        "import vm_memory_mypy.plugin as plugin\n"
        "options = Options()\n"
        "options.config_file = sys.argv[1]\n"
        "plugin.VmMemoryPlugin(options)\n"
        "print(plugin.__version__)\n")
    versions: list[str] = []
    for target in ("x86_64", "riscv32"):
        config = tmp_path / f"version-{target}.ini"
        config.write_text(f"[vm_memory_mypy]\ntarget = {target}\n")
        result = subprocess.run([sys.executable, "-c", code, str(config)],
                                capture_output=True, text=True, env=mypy_environment(),
                                check=True)
        versions.append(result.stdout.strip())
    assert versions[0] != versions[1]
    assert all(version.startswith("0.1.0+") for version in versions)


@pytest.mark.long
def test_the_oldest_supported_mypy_gives_the_same_verdicts(tmp_path: Path) -> None:
    """`MINIMUM_MYPY`, installed in a fresh virtual environment, passes every case."""
    environment = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(environment)], check=True)
    python = str(environment / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", f"mypy=={MINIMUM_MYPY}",
                    "typing_extensions"], check=True, timeout=600)
    for target, files in sorted(FILES_BY_TARGET.items()):
        result = run_mypy(ini_config(tmp_path, target), files, tmp_path / f"cache-{target}",
                          python)
        expected: Expected = set()
        for path in files:
            expected |= expected_errors(path, target)
        assert reported_errors(result.stdout) == expected, result.stdout + result.stderr
