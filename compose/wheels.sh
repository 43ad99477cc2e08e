#!/usr/bin/env bash
# The wheels hark's image installs, made here, so `docker build` needs no network:
# for a machine whose builds cannot reach PyPI (air-gapped, or TLS re-signed on the
# way, as on hark's development machines). The Dockerfile installs from
# compose/wheels/ with --no-index when it holds wheels, from PyPI otherwise.
#
#   bash compose/wheels.sh                 # EXTRAS=whisper,sphinx for both engines
#
# PYTHON (default python3) must be the image's Python version (3.11) on the same
# architecture, as the wheels are made for it.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${EXTRAS:-whisper}"
python="${PYTHON:-python3}"
mkdir -p compose/wheels
"$python" -m pip wheel --quiet --wheel-dir compose/wheels -c constraints.txt \
    ".[${extras}]" "setuptools>=68" \
    "async-timeout>=4.0.3"  # what redis needs on Python < 3.11.3 (Debian bookworm: 3.11.2)
rm -f compose/wheels/hark-*.whl   # hark itself is built from the sources in the image
echo "compose/wheels: $(ls compose/wheels/*.whl | wc -l) wheels for hark[${extras}]"
