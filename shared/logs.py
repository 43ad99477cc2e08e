"""Logging for every hark process, configured once at the entry point."""

from __future__ import annotations

import logging
import sys


class _ActorFilter(logging.Filter):
    def __init__(self, actor: str) -> None:
        super().__init__()
        self.actor = actor

    def filter(self, record: logging.LogRecord) -> bool:
        record.actor = self.actor
        return True


def setup(level: str, actor: str) -> None:
    """Log to stderr, each line naming the actor that wrote it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ActorFilter(actor))
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(actor)-15s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
