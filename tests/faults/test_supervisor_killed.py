"""The supervisor SIGKILLed: its children go with it, and the next `hark up` removes
what it left behind (its working folder, the admin token file it made up)."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pytest

from services.supervisor.cli import OWNER_FILE, WORKDIR_PREFIX
from shared.auth import admin_token_path
from tests.conftest import TreeFactory

pytestmark = pytest.mark.timeout(90)


def _workdirs_of(pid: int) -> list[Path]:
    found = []
    for folder in Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
        try:
            if (folder / OWNER_FILE).read_text().strip() == str(pid):
                found.append(folder)
        except OSError:
            continue
    return found


async def test_the_next_start_removes_what_a_killed_supervisor_left(
    start_tree: TreeFactory,
) -> None:
    first = await start_tree()  # embedded Redis (its socket in the folder), a made-up token
    assert first.proc is not None
    pid = first.proc.pid
    token = admin_token_path(first.status_port)
    assert token.exists() and len(_workdirs_of(pid)) == 1
    os.kill(pid, signal.SIGKILL)
    await first.proc.wait()
    # Left behind: nothing ran to clean up.
    assert token.exists() and len(_workdirs_of(pid)) == 1
    second = await start_tree()
    assert (await second.status())["healthy"] is True
    assert not token.exists() and _workdirs_of(pid) == []
    assert second.proc is not None and len(_workdirs_of(second.proc.pid)) == 1
    assert admin_token_path(second.status_port).exists()  # the live one's are kept
