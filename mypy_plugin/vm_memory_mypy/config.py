"""The plugin's configuration: its own section of the mypy config file.

`[tool.vm_memory_mypy]` in pyproject.toml or `[vm_memory_mypy]` in mypy.ini/setup.cfg
(mypy refuses unknown keys inside its own `[mypy]` section), with the keys `target`,
`os` and `data_model`. Without a target the plugin checks for the host.

Two mechanisms keep cached verdicts honest when the section changes. mypy stores
`Configuration.data` with each module in its incremental cache (the plugin's
`report_config_data`), so a module checked for another target is stale. The daemon
compares plugin versions instead, when `dmypy run` starts: `versioned()` gives the
version with a digest of the configuration, which the entry module exposes as its
`__version__` (see `vm_memory_mypy.plugin`).
"""

from __future__ import annotations

import configparser
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vm_memory_mypy.targets import Target, host_target, make_target

SECTION: Final = "vm_memory_mypy"
KEYS: Final = ("target", "os", "data_model")
PLUGIN_VERSION: Final = "0.2.0"


def _sources_digest() -> str:
    """A digest of the plugin's own modules: mypy hashes only the entry module, so an
    edit of a check elsewhere in the package would otherwise leave cached verdicts."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


SOURCES_DIGEST: Final = _sources_digest()


class ConfigurationError(ValueError):
    """A mistake in the plugin's section; the message names the accepted values."""


@dataclass(frozen=True)
class Configuration:
    """The target to check for, and what the caches compare."""

    target: Target

    @property
    def data(self) -> dict[str, str]:
        return {"target": self.target.architecture.name, "os": self.target.operating_system,
                "data_model": self.target.data_model, "plugin": PLUGIN_VERSION,
                "sources": SOURCES_DIGEST}

    @property
    def digest(self) -> str:
        encoded = json.dumps(self.data, sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()[:12]

    @property
    def version(self) -> str:
        return f"{PLUGIN_VERSION}+{self.digest}"


def read_section(path: str | None) -> dict[str, str]:
    """The plugin's section of the config file at `path` (TOML or INI), as strings."""
    if not path:
        return {}
    if path.endswith(".toml"):
        import tomllib  # only here: an INI configuration does not pay for it

        with open(path, "rb") as file:
            section = tomllib.load(file).get("tool", {}).get(SECTION, {})
        return {key: str(value) for key, value in section.items()}
    parser = configparser.ConfigParser()
    parser.read(path)
    return dict(parser.items(SECTION)) if parser.has_section(SECTION) else {}


def configuration(settings: dict[str, str]) -> Configuration:
    """A Configuration from the section's settings, or ConfigurationError."""
    unknown = set(settings) - set(KEYS)
    if unknown:
        raise ConfigurationError(f"[{SECTION}] has unknown keys: {', '.join(sorted(unknown))}; "
                                 f"expected {', '.join(KEYS)}")
    try:
        if "target" in settings:
            target = make_target(settings["target"], settings.get("os"),
                                 settings.get("data_model"))
        else:
            host = host_target()
            target = make_target(host.architecture.name,
                                 settings.get("os", host.operating_system),
                                 settings.get("data_model"))
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    return Configuration(target)


_loaded: list[Configuration] = []


def load(path: str | None) -> Configuration:
    """The configuration in the file at `path`, remembered as the one in force."""
    loaded = configuration(read_section(path))
    _loaded[:] = [loaded]
    return loaded


def versioned() -> str:
    """The plugin's version, with a digest of the configuration in force once loaded."""
    return _loaded[0].version if _loaded else PLUGIN_VERSION
