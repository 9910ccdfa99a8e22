"""The dual licence the README states ships with the code: both texts are in the
repository, and the package metadata declares the SPDX expression and both files."""

from __future__ import annotations

import re
import tomllib

from support import ROOT

FILES = ["LICENSE-APACHE", "LICENSE-BSD-3-Clause"]


def test_the_package_declares_the_licence_and_its_files() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0 OR BSD-3-Clause"
    assert project["license-files"] == FILES
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"\| licence \| Apache-2\.0 OR BSD-3-Clause \|", readme)
    for name in FILES:
        assert f"[{name}]({name})" in readme


def test_the_licence_texts_are_the_standard_ones() -> None:
    apache = (ROOT / "LICENSE-APACHE").read_text()
    assert apache.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in apache
    assert len(re.findall(r"^\s+\d\. ", apache, flags=re.MULTILINE)) == 9  # sections 1-9
    bsd = (ROOT / "LICENSE-BSD-3-Clause").read_text()
    assert bsd.startswith("Copyright (c) the vm-memory for Python authors.")
    assert len(re.findall(r"^\d\. ", bsd, flags=re.MULTILINE)) == 3  # the three clauses
    assert "Neither the name of the copyright holder nor the names of its" in bsd
