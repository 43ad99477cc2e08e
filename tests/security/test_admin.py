"""The supervisor's changing endpoints always need a token: without HARK_ADMIN_TOKEN,
`hark up` makes one up, keeps it in a file only its user can read, for the `hark`
commands, and removes it when it stops."""

from __future__ import annotations

import stat

import aiohttp
import pytest

from shared.auth import admin_token_path
from tests.conftest import TreeFactory

pytestmark = pytest.mark.timeout(60)


async def test_without_a_configured_token_hark_up_makes_one_and_requires_it(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url)
    token_file = admin_token_path(tree.status_port)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert any(str(token_file) in line for line in tree.banner)
    drain = f"{tree.status_url}/actors/transcriber-0/drain"
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer not-the-token-0123456789"}):
            async with http.post(drain, headers=headers) as resp:
                assert resp.status == 401  # loopback is no longer enough
        async with http.post(drain, headers=tree.admin) as resp:
            assert resp.status == 200
    code, out = await tree.cli("drain", "transcriber-0", "--off")  # finds the file
    assert code == 0, out
    assert await tree.stop() == 0
    assert not token_file.exists()
