"""Fixtures of the security tests: the in-process gateway (gateway_fixtures.py) with two
API keys, an admin token and an Origin allowlist."""

from __future__ import annotations

import pytest

from shared.config import Settings
from tests.integration.gateway_fixtures import LIMIT, gateway, transcriber

__all__ = ["gateway", "settings", "transcriber"]

KEY = "alpha-key-0123456789abcdef"  # the key named alpha
OTHER = "beta-key-0123456789abcdef"  # the key named beta
ORIGIN = "https://app.example"
ADMIN = "admin-token-0123456789"


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, max_chunk_bytes=LIMIT, heartbeat_interval=0.5,
                    api_keys=f"alpha:{KEY},beta:{OTHER}", allowed_origins=ORIGIN,
                    admin_token=ADMIN)  # fmt: skip


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}
