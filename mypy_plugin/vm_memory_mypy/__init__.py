"""vm-memory's mypy plugin (import name `vm_memory_mypy`).

Enable it with `plugins = ["vm_memory_mypy.plugin"]`; configure the target in
`[tool.vm_memory_mypy]` (pyproject.toml) or `[vm_memory_mypy]` (mypy.ini, setup.cfg).
`plugin` is the entry module (a dispatcher); `checks/` holds one module per check,
`fields` and `constants` what they read from the program, `targets` the table of targets,
`config` the plugin's section, `errorcodes` the codes.
"""

MINIMUM_MYPY = "1.19.1"
"""The oldest mypy the plugin is tested with
(`pytest -m long tests/plugin/test_configuration_runs.py`)."""
