"""Redis with an ACL user and a password, reached over TLS (rediss://): the whole tree
works, and the password shows nowhere: not in the banner, the logs, /config, the
status report or the audit log.

The redis-server of this machine is built without TLS, so TLS ends in a proxy in front
of it (tests/link.py) with a certificate from a throwaway CA (trustme); the actors check
it against that CA (`ssl_ca_certs` in the URL).
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme
from redis.asyncio.connection import parse_url

from services.supervisor.tree import MAX_SOCKET_PATH, embedded_redis
from tests.conftest import TreeFactory, redis_process
from tests.link import Link

pytestmark = pytest.mark.timeout(120)

PASSWORD = "acl-secret-Zq81pX0vW3"


async def test_an_acl_user_over_tls_works_and_its_password_shows_nowhere(
    start_tree: TreeFactory, tmp_path: Path
) -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # The default user is off: only `hark` with its password gets in.
    acl = ("--user", "default", "off", "--user", "hark", "on", f">{PASSWORD}", "~*", "&*",
           "+@all")  # fmt: skip
    with redis_process(*acl) as plain:
        link = Link(plain.replace("redis://", f"redis://hark:{PASSWORD}@"), ssl=server)
        url = f"{await link.start()}?ssl_ca_certs={ca_file}"
        assert url.startswith(f"rediss://hark:{PASSWORD}@127.0.0.1:")
        tree = await start_tree(redis_url=url, env={"HARK_LOG_LEVEL": "DEBUG"})
        try:
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(tree.ws_url) as ws:
                    hello = await ws.receive_json(timeout=10)
                    await ws.send_bytes(b"\x00" * 320)
                    replies = [await ws.receive_json(timeout=10) for _ in range(2)]
                    assert {r["status"] for r in replies} == {"received", "transcript"}
                shown = []
                base = tree.ws_url.replace("ws://", "http://").removesuffix("/ws")
                for where in (f"{base}/config", f"{tree.status_url}/status",
                              f"{tree.status_url}/audit?count=1000"):  # fmt: skip
                    async with http.get(where, headers=tree.admin) as resp:
                        assert resp.status == 200, where
                        shown.append(await resp.text())
            await tree.wait_audit(lambda e: e["event"] == "session_close"
                                  and e.get("session") == hello["session_id"])  # fmt: skip
            audit = json.dumps(await tree.audit())
        finally:
            await tree.stop()
            await link.stop()
    assert "hark:***@" in shown[0]  # /config: the URL, its password redacted
    for text in [*shown, audit, "\n".join(tree.banner), tree.log_path.read_text()]:
        assert PASSWORD not in text
    assert "hark:***@127.0.0.1" in "\n".join(tree.banner)


def test_the_embedded_redis_is_reachable_by_this_user_only_with_a_new_random_password(
    tmp_path: Path,
) -> None:
    passwords = set()
    for _ in range(2):
        spec, url = embedded_redis(tmp_path)
        argv = list(spec.argv)
        # A Unix socket only its owner may open, and no TCP port at all.
        sock = argv[argv.index("--unixsocket") + 1]
        assert argv[argv.index("--unixsocketperm") + 1] == "700"
        assert argv[argv.index("--port") + 1] == "0" and "--bind" not in argv
        assert argv[argv.index("--protected-mode") + 1] == "yes"
        # Its password comes on stdin, never in its command line (every user reads that).
        assert spec.stdin is not None and spec.stdin.startswith(b"requirepass ")
        password = spec.stdin.decode().split()[1]
        assert password not in " ".join(argv) and argv[1] == "-"
        assert len(password) >= 32  # 24 random bytes, URL-safe
        assert url == f"unix://:{password}@{sock}?db=0"
        passwords.add(password)
    assert len(passwords) == 2
    odd = tmp_path / "a folder #1?"  # the socket's path is quoted in the URL
    assert parse_url(embedded_redis(odd)[1])["path"] == str(odd / "redis.sock")
    # Where the socket's path would be too long for one: a loopback port instead.
    deep = tmp_path / ("d" * (MAX_SOCKET_PATH - len(str(tmp_path))))
    spec, url = embedded_redis(deep)
    argv = list(spec.argv)
    assert "--unixsocket" not in argv and argv[argv.index("--bind") + 1] == "127.0.0.1"
    assert spec.stdin is not None
    assert url.startswith(f"redis://:{spec.stdin.decode().split()[1]}@127.0.0.1:")
