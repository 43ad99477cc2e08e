"""Choosing an engine: a missing dependency is named at start, with the extra to install."""

from __future__ import annotations

import sys

import pytest

from services.transcriber.engines import EngineUnavailable, create_engine
from shared.config import Settings


@pytest.mark.parametrize(
    ("engine", "hidden", "extra"),
    [("whisper", "faster_whisper", "whisper"), ("sphinx", "pocketsphinx", "sphinx")],
)
def test_missing_engine_dependency_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, engine: str, hidden: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, hidden, None)  # import of it now fails
    for name in [m for m in sys.modules if m.startswith("services.transcriber.engines.")]:
        if name.rsplit(".", 1)[1] in ("whisper", "sphinx", "utterances"):
            monkeypatch.delitem(sys.modules, name)
    with pytest.raises(EngineUnavailable, match=rf"pip install -e '\.\[{extra}\]'"):
        create_engine(Settings(engine=engine))


def test_the_mock_engine_needs_nothing() -> None:
    assert create_engine(Settings(engine="mock")).name == "mock"
