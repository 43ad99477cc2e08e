"""Fixtures of the in-process gateway tests (see gateway_fixtures.py)."""

from tests.integration.gateway_fixtures import gateway, held_engine, settings, transcriber

__all__ = ["gateway", "held_engine", "settings", "transcriber"]
