"""Every Python block of the README type-checks clean under mypy with the plugin (with the
README's own recommended plugin configuration), plain mypy and pyright, all strict."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest

pytestmark = pytest.mark.type_checker  # not in the runtime suite run on foreign ports

README: Final = Path(__file__).resolve().parent.parent / "README.md"
TEXT: Final = README.read_text()
BLOCKS: Final = re.findall(r"```python\n(.*?)```", TEXT, flags=re.DOTALL)
PLUGIN_CONFIG: Final = re.findall(r"```toml\n(.*?)```", TEXT.split("## The mypy plugin")[1],
                                  flags=re.DOTALL)[0]


@pytest.fixture(scope="module")
def blocks(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("readme")
    paths: list[Path] = []
    for index, block in enumerate(BLOCKS):
        path = folder / f"readme_block_{index}.py"
        path.write_text(block)
        paths.append(path)
    return paths


def mypy_output(blocks: list[Path], config_text: str, name: str) -> str:
    folder = blocks[0].parent
    config = folder / name
    config.write_text(config_text)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir",
         str(folder / f"cache-{name}"), "--no-pretty", *map(str, blocks)],
        cwd=folder, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.stdout


def test_the_readme_has_blocks_and_a_plugin_configuration() -> None:
    assert len(BLOCKS) >= 5
    assert 'plugins = ["vm_memory_mypy.plugin"]' in PLUGIN_CONFIG


def test_mypy_with_the_readmes_plugin_configuration(blocks: list[Path]) -> None:
    config = PLUGIN_CONFIG.replace("[tool.mypy]\n", "[tool.mypy]\nstrict = true\n")
    output = mypy_output(blocks, config, "pyproject.toml")
    assert "error:" not in output, output


def test_plain_mypy(blocks: list[Path]) -> None:
    output = mypy_output(blocks, "[mypy]\nstrict = True\n", "plain.ini")
    assert "error:" not in output, output


def test_pyright(blocks: list[Path]) -> None:
    folder = blocks[0].parent
    config = folder / "pyrightconfig.json"
    config.write_text(json.dumps({"typeCheckingMode": "strict", "pythonVersion": "3.11"}))
    result = subprocess.run(
        [sys.executable, "-m", "pyright", "--pythonpath", sys.executable, "--outputjson",
         "-p", str(config), *map(str, blocks)], cwd=folder, capture_output=True, text=True,
        timeout=600, check=False)
    report: dict[str, Any] = json.loads(result.stdout)
    errors = [diagnostic for diagnostic in report["generalDiagnostics"]
              if diagnostic["severity"] == "error"]
    assert errors == [], errors


def test_a_mistake_in_a_block_would_be_seen(blocks: list[Path]) -> None:
    """The control: the same run reports an error written into a block."""
    broken = blocks[0].parent / "readme_block_broken.py"
    broken.write_text(BLOCKS[0] + "\nfrom vm_memory import AlignedGuestAddress, GuestAddress\n"
                      "AlignedGuestAddress.new(ctypes.c_uint32, GuestAddress(0x1002))\n"
                      "import ctypes\n")
    output = mypy_output([broken],
                         PLUGIN_CONFIG.replace("[tool.mypy]\n", "[tool.mypy]\nstrict = true\n"),
                         "pyproject.toml")
    assert "[vm-memory-misaligned]" in output, output
