"""vm-memory's mypy plugin (import name `vm_memory_mypy`).

Enable it with `plugins = ["vm_memory_mypy.plugin"]`; configure the target in
`[tool.vm_memory_mypy]` (pyproject.toml) or `[vm_memory_mypy]` (mypy.ini, setup.cfg).
See `vm_memory_mypy.plugin` for the checks and `vm_memory_mypy.targets` for the table of
targets.
"""

MINIMUM_MYPY = "1.19.1"
"""The oldest mypy the plugin is tested with (`pytest -m long tests/test_mypy_plugin.py`)."""
