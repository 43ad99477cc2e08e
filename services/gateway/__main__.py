"""`python -m services.gateway --name gateway`: the gateway actor.

Started by the supervisor, which passes the settings in HARK_* variables.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from aiohttp import web

from services.gateway.app import GATEWAY, create_app, create_vosk_app
from shared import actor, logs
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

    async def serve(stop: asyncio.Event) -> int:
        assert settings.redis_url is not None
        redis = connect(settings.redis_url, name=args.name)
        app = create_app(settings, redis, args.name)
        runner = web.AppRunner(app, handle_signals=False,
                               shutdown_timeout=settings.shutdown_timeout)  # fmt: skip
        await runner.setup()
        vosk_runner = web.AppRunner(create_vosk_app(app[GATEWAY]), handle_signals=False,
                                    shutdown_timeout=settings.shutdown_timeout)  # fmt: skip
        await vosk_runner.setup()
        try:
            sites = [(runner, settings.port)]
            if settings.vosk_port is not None:
                sites.append((vosk_runner, settings.vosk_port))
            for site_runner, port in sites:
                try:
                    await web.TCPSite(site_runner, settings.host, port).start()
                except OSError as exc:
                    log.error("cannot listen on %s:%d: %s", settings.host, port, exc.strerror)
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


if __name__ == "__main__":
    main()
