"""Runs the YAML plugin cases grouped by the configuration they check under.

mypy drops its whole incremental cache when the plugin's target changes (the plugin's
`__version__` carries a digest of it), so cases alternating between targets would each
re-check the standard library and vm_memory from scratch. Grouping the cases by their
resolved target and mypy options keeps the cache warm within a group; the verdicts do
not depend on the order.
"""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from vm_memory_mypy.targets import host_target, make_target

HERE = Path(__file__).resolve().parent


def configuration_key(item: pytest.Item) -> tuple[str, str]:
    """(resolved target, the [mypy] options) of a YAML case; ("", "") for other tests."""
    text = getattr(item, "additional_mypy_config", None)
    if not isinstance(text, str):
        return "", ""
    parser = configparser.ConfigParser()
    parser.read_string(text)
    section = dict(parser.items("vm_memory_mypy")) if parser.has_section("vm_memory_mypy") \
        else {}
    host = host_target()
    target = make_target(section.get("target", host.architecture.name),
                         section.get("os", host.operating_system),
                         section.get("data_model"))
    options = sorted(parser.items("mypy")) if parser.has_section("mypy") else []
    return target.describe(), repr(options)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    slots = [index for index, item in enumerate(items) if HERE in item.path.parents]
    for index in slots:
        items[index].add_marker(pytest.mark.type_checker)
    grouped = sorted((items[index] for index in slots), key=configuration_key)
    for index, item in zip(slots, grouped, strict=True):
        items[index] = item
