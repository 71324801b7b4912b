"""The package metadata builds cleanly: an SPDX license expression and the license file, no warnings."""

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def test_the_build_requires_a_setuptools_that_reads_spdx_license_expressions():
    """``license = "Apache-2.0"`` with ``license-files`` needs setuptools 77 or later (PEP 639)."""
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    setuptools = next(Requirement(r) for r in build["requires"] if Requirement(r).name == "setuptools")
    assert not setuptools.specifier.contains("76.9") and setuptools.specifier.contains("77.0.0")


def test_the_metadata_builds_without_a_deprecation_warning_and_names_the_license(tmp_path):
    """What `pip install` does first: it printed setuptools' `project.license` deprecation three times."""
    code = f"from setuptools import build_meta; print(build_meta.prepare_metadata_for_build_wheel({str(tmp_path)!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr
    dist_info = tmp_path / out.stdout.strip().splitlines()[-1]
    metadata = (dist_info / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata
    assert "Apache License\n                           Version 2.0" in (dist_info / "licenses" / "LICENSE").read_text()
