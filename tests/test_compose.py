"""The compose deployment's files: schema-valid, consistent with the code, non-root image."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import EnvVar, Settings
from tests.compose_cli import compose_command

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose" / "docker-compose.yml"
DOCKERFILE = ROOT / "compose" / "Dockerfile"


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run(
        [str(tool), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    result = _validate(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check can fail: the same file with a key compose does not know is refused.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    stop_grace_period:", "    stop_grace:"))
    assert _validate(broken).returncode != 0


@pytest.mark.skipif(compose_command() is None, reason="no Docker Compose v2 here")
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("HARK_ADMIN_TOKEN=0123456789abcdef0123\nDOCKER_GID=999\n")
    result = subprocess.run(
        [*(compose_command() or []), "--env-file", str(env), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_every_variable_the_compose_file_sets_is_a_hark_setting() -> None:
    known = {f.metadata["env"].name for f in dataclasses.fields(Settings)}
    set_here = set(re.findall(r"^\s+(HARK_[A-Z_]+):", COMPOSE.read_text(), re.MULTILINE))
    assert set_here, "no HARK_ variables found: the pattern is stale"
    assert set_here - known == set()
    var: EnvVar = next(f.metadata["env"] for f in dataclasses.fields(Settings)
                       if f.name == "backend")  # fmt: skip
    assert f"{var.name}: docker" in COMPOSE.read_text()


def test_the_image_is_multi_stage_runs_as_a_user_and_copies_what_exists() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2
    run_stage = lines[lines.index(stages[1]) :]
    users = [line.split()[1] for line in run_stage if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert "tests" in (ROOT / ".dockerignore").read_text().split()
