"""The mypy plugin's YAML cases (pytest-mypy-plugins) and their ordering hook."""
