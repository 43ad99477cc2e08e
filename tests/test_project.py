"""The project's own checks: docs that match the code, ruff and mypy clean."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import EnvVar, Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _settings_rows() -> dict[str, list[str]]:
    rows = {}
    for line in README.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith("HARK_"):
            rows[cells[0]] = cells
    return rows


@pytest.mark.parametrize("field", dataclasses.fields(Settings), ids=lambda f: f.name)
def test_readme_documents_every_setting_with_its_alias_and_default(
    field: dataclasses.Field[object],
) -> None:
    var: EnvVar = field.metadata["env"]
    row = _settings_rows().get(var.name)
    assert row is not None, f"{var.name} is not in the README's settings table"
    assert row[1] == (var.alias or ""), f"{var.name}: alias in README {row[1]!r}"
    default = field.default
    if default is None:
        assert "none" in row[2]
    else:
        assert row[2] == str(default), f"{var.name}: README says {row[2]}, code says {default}"


def test_readme_has_no_setting_the_code_lacks() -> None:
    known = {f.metadata["env"].name for f in dataclasses.fields(Settings)}
    assert set(_settings_rows()) <= known


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    block = re.search(r"<!-- test-command -->\n```sh\n(.+?)\n```", README, re.S)
    assert block is not None and "pytest" in block.group(1)
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert block.group(1) in ci_lines, ".ci/run must run the README's test command as written"


def test_ruff_finds_nothing() -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_finds_nothing() -> None:
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
