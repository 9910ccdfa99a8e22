"""Every Python example in the README runs as written (each block in a fresh namespace)."""

from __future__ import annotations

import re

import pytest
from host_assumptions import EIGHT_BYTE_REFUSAL
from support import ROOT

from vm_memory import AtomicWidthUnsupported

README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int) -> None:
    code = compile(BLOCKS[index], f"README.md python block {index}", "exec")
    try:
        exec(code, {"__name__": f"readme_example_{index}"})
    except AtomicWidthUnsupported as refusal:
        if EIGHT_BYTE_REFUSAL is None:
            raise
        pytest.skip(f"this example uses 8-byte atomics, which this host refuses: {refusal}")
