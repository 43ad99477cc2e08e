"""`python -m services.gateway --name gateway`: the gateway actor.

Started by the supervisor, which passes the settings in HARK_* variables.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys

from aiohttp import web

from services.gateway.app import GATEWAY, create_app, create_vosk_app
from shared import actor, fds, logs
from shared.config import Settings
from shared.redis_util import connect

log = logging.getLogger("services.gateway")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.gateway")
    parser.add_argument("--name", default="gateway", help="actor name")
    args = parser.parse_args()
    settings = Settings.from_env()
    logs.setup(settings.log_level, args.name, settings.log_format)
    if settings.redis_url is None:
        parser.error("HARK_REDIS_URL is not set (the supervisor sets it)")
    settings = _enough_descriptors(settings)

    async def serve(stop: asyncio.Event) -> int:
        assert settings.redis_url is not None
        redis = connect(settings.redis_url, name=args.name)
        app = create_app(settings, redis, args.name)
        # keepalive_timeout runs from a connection's start until its request is whole:
        # a handshake half sent is closed after it rather than holding a descriptor.
        runner = web.AppRunner(app, handle_signals=False,
                               shutdown_timeout=settings.shutdown_timeout,
                               keepalive_timeout=settings.handshake_timeout)  # fmt: skip
        await runner.setup()
        vosk_runner = web.AppRunner(create_vosk_app(app[GATEWAY]), handle_signals=False,
                                    shutdown_timeout=settings.shutdown_timeout,
                                    keepalive_timeout=settings.handshake_timeout)  # fmt: skip
        await vosk_runner.setup()
        try:
            sites = [(runner, settings.port)]
            if settings.vosk_port is not None:
                sites.append((vosk_runner, settings.vosk_port))
            for site_runner, port in sites:
                try:
                    await web.TCPSite(site_runner, settings.host, port).start()
                except OSError as exc:
                    flag = "--port (HARK_PORT)" if port == settings.port else "HARK_VOSK_PORT"
                    log.error("cannot listen on %s:%d: %s; choose another with %s", settings.host,
                              port, exc.strerror, flag)  # fmt: skip
                    return 2
            actor.notify_ready()
            await stop.wait()
            # Drain while the server still reads frames: aiohttp's cleanup stops reading
            # from connections before the app's shutdown hooks run.
            await app[GATEWAY].drain()
            return 0
        finally:
            await vosk_runner.cleanup()
            await runner.cleanup()
            await redis.aclose()

    sys.exit(actor.run(serve, grace=settings.shutdown_timeout))


def _enough_descriptors(settings: Settings) -> Settings:
    """Raise the soft open-file limit to what HARK_MAX_SESSIONS needs (a descriptor per
    connection, and a reserve); where the hard limit is lower, take fewer sessions and
    say so, rather than run out of descriptors with connections reset."""
    need = settings.max_sessions + fds.RESERVE
    soft, hard = fds.raise_soft_limit(need)
    if soft >= need:
        return settings
    fewer = max(1, int(soft * fds.PRESSURE) - fds.RESERVE)
    log.warning("open-file limit %d (hard %d) is below the %d that HARK_MAX_SESSIONS=%d "
                "needs: taking at most %d sessions; raise it (ulimit -n, LimitNOFILE=) "
                "or lower HARK_MAX_SESSIONS", soft, hard, need, settings.max_sessions,
                fewer)  # fmt: skip
    return dataclasses.replace(settings, max_sessions=fewer)


if __name__ == "__main__":
    main()
