"""The library is the package: `import vm_memory` loads only the library, and nothing in
it imports the tool packages built on top of it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from support import ROOT

LIBRARY = ROOT / "vm_memory"
TOOL_PACKAGES = ("vm_memory_tools", "vm_memory_virtio", "vm_memory_vhost", "vm_memory_mypy")


def test_import_loads_only_the_library() -> None:
    """A fresh interpreter: after `import vm_memory`, no module of another package of ours."""
    probe = ("import sys, vm_memory\n"
             "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('vm_memory'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.split()
    assert "vm_memory.guest_memory" in loaded  # the probe sees the library itself
    strays = [name for name in loaded if name.split(".")[0] != "vm_memory"]
    assert strays == []


def _imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_library_never_imports_the_tools() -> None:
    """Not even lazily or under TYPE_CHECKING: every import statement of every module."""
    offenders = {
        f"{path.name}: {module}"
        for path in sorted(LIBRARY.glob("*.py"))
        for module in _imported_modules(path)
        if module.split(".")[0] in TOOL_PACKAGES
    }
    assert offenders == set()


def test_the_direction_check_sees_an_offender(tmp_path: Path) -> None:
    """The control: a module importing a tool package is caught by the same parser."""
    offender = tmp_path / "offender.py"
    offender.write_text("from vm_memory_tools.demo import run_demo\n")
    assert "vm_memory_tools.demo" in _imported_modules(offender)
