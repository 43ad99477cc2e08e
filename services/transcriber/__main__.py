"""`python -m services.transcriber --name transcriber-0`: one transcriber actor.

Started by the supervisor, which passes the settings in HARK_* variables.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import setproctitle

from services.transcriber.actor import Transcriber
from services.transcriber.engines import EngineUnavailable, create_engine
from shared import actor, logs
from shared.config import Settings
from shared.redis_util import connect

log = logging.getLogger("services.transcriber")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.transcriber")
    parser.add_argument("--name", required=True, help="actor name; also its mailbox and "
                        "consumer; '-': a warm spare, which reads it from stdin")  # fmt: skip
    args = parser.parse_args()
    settings = Settings.from_env()
    if settings.redis_url is None:
        parser.error("HARK_REDIS_URL is not set (the supervisor sets it)")
    try:
        engine = create_engine(settings)
    except EngineUnavailable as exc:
        # Said at start, not at the first chunk; the supervisor then fails `hark up`.
        logs.setup(settings.log_level, args.name, settings.log_format)
        log.error("engine %s unavailable: %s", settings.engine, exc)
        sys.exit(2)
    if args.name == "-":
        # Imports and the engine are loaded (most of the start-up): wait until needed.
        args.name = sys.stdin.readline().strip()
        if not args.name:
            return  # closed without a name: the spare is not needed
        # In `ps` it still read `--name -`: say which actor it now is.
        setproctitle.setproctitle(
            " ".join(sys.orig_argv).replace("--name -", f"--name {args.name}")
        )
    logs.setup(settings.log_level, args.name, settings.log_format)

    async def serve(stop: asyncio.Event) -> None:
        assert settings.redis_url is not None
        redis = connect(settings.redis_url, name=args.name)
        try:
            await Transcriber(settings, engine, redis, args.name).run(stop)
        finally:
            await redis.aclose()

    sys.exit(actor.run(serve, grace=settings.shutdown_timeout))


if __name__ == "__main__":
    main()
