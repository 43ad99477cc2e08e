"""The dependencies are pinned (constraints.txt) and audited for known vulnerabilities.

The pinned versions are what the install takes (`pip install -c constraints.txt`, the
README's commands), so the audit of this environment is the audit of the pins.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent.parent
# Findings looked at and accepted, each with why: {"PYSEC-…/GHSA-…": "why it does not
# apply to hark"}. Empty: none so far.
EXPLAINED: dict[str, str] = {}


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_normal(name)] = version
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_dependency_installed_is_the_pinned_version() -> None:
    pins = _pins()
    required = {_normal(re.split(r"[ ;<>=!~\[]", r)[0]) for r in metadata.requires("hark") or []}
    assert required - {"hark"} <= pins.keys(), "a requirement of hark is not pinned"
    for dist in metadata.distributions():
        name = _normal(dist.metadata["Name"])
        if name in pins:
            # As pip reads a pin: ==2.13.0 takes 2.13.0+cpu (a local build's label).
            assert Version(dist.version) in SpecifierSet(f"=={pins[name]}"), (
                f"{name} {dist.version} installed, {pins[name]} pinned"
            )


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def test_no_known_vulnerability_in_the_pinned_dependencies() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip_audit", "--skip-editable", "--progress-spinner", "off",
         "-f", "json"], capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    if done.returncode not in (0, 1):  # 1: vulnerabilities found, read below
        pytest.skip(f"NOT AUDITED: pip-audit could not run, no dependency was checked: "
                    f"{done.stderr.strip()[-300:]}")  # fmt: skip
    deps = json.loads(done.stdout)["dependencies"]
    found = {v["id"]: f"{d['name']} {d['version']}" for d in deps for v in d.get("vulns", [])}
    unexplained = {vuln: dep for vuln, dep in found.items() if vuln not in EXPLAINED}
    assert unexplained == {}, f"known vulnerabilities: {unexplained}"
    audited = [d for d in deps if "skip_reason" not in d]
    print(f"pip-audit: {len(audited)} of {len(deps)} dependencies audited, "
          f"{len(found)} finding(s), all explained")  # fmt: skip
    if not audited:
        unchecked = ", ".join(f"{d['name']} {d.get('version') or _version(d['name'])}"
                              for d in deps)  # fmt: skip
        pytest.skip(f"NOT AUDITED: the vulnerability service (PyPI) answered for none of the "
                    f"{len(deps)} installed versions, none was checked: {unchecked}")  # fmt: skip
