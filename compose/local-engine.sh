#!/usr/bin/env bash
# A Docker Engine for hark's container tests and compose deployment on a machine that
# has none, and the base images its files name where no registry can be reached.
#
#   sudo bash compose/local-engine.sh        # or as root; .ci/run runs it
#
# 1. If `docker info` answers, the engine is used as it is. Otherwise, as root with apt:
#    Debian's docker.io is installed and dockerd started in the background (its log in
#    $HARK_DOCKERD_LOG, /tmp/hark-dockerd.log by default), for machines without systemd.
# 2. The images the compose file and the tests name, python:3.11-slim and
#    redis:7-alpine, are pulled; where that fails (no registry), stand-ins are built
#    from a Debian bookworm root made with debootstrap from the apt mirror (Python 3.11
#    and Redis 7 from Debian), tagged with those names. Images already there are kept.
#
# Exit status 0: an engine answers and the images are there. Otherwise it says why and
# exits 1, and the container tests skip with that reason.
set -euo pipefail

log() { echo "local-engine: $*" >&2; }

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

start_engine() {
    if engine_answers; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        log "no Docker engine answers and this is not root: cannot install one"
        return 1
    fi
    if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
        command -v apt-get >/dev/null || { log "no dockerd and no apt-get"; return 1; }
        log "installing docker.io and debootstrap with apt"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap >&2 \
            || { log "apt-get install failed"; return 1; }
    fi
    local dockerd_log="${HARK_DOCKERD_LOG:-/tmp/hark-dockerd.log}"
    log "starting dockerd (log: $dockerd_log)"
    nohup dockerd >"$dockerd_log" 2>&1 &
    for _ in $(seq 1 60); do
        engine_answers && return 0
        sleep 0.5
    done
    log "dockerd did not answer within 30 s: see $dockerd_log"
    return 1
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

build_stand_ins() {
    if have_image python:3.11-slim && have_image redis:7-alpine; then
        return 0
    fi
    if timeout 60 docker pull -q python:3.11-slim >&2 && timeout 60 docker pull -q redis:7-alpine >&2; then
        return 0
    fi
    log "no registry: building stand-ins for python:3.11-slim and redis:7-alpine"
    command -v debootstrap >/dev/null || { log "debootstrap is not installed"; return 1; }
    local mirror
    mirror="$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
        /etc/apt/sources.list.d 2>/dev/null | head -1 | awk '{print $2}' || true)"
    STAND_IN_ROOT="$(mktemp -d)"
    trap 'rm -rf "$STAND_IN_ROOT"' EXIT
    local root="$STAND_IN_ROOT"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,redis-server,redis-tools,ca-certificates \
        bookworm "$root" "${mirror:-http://deb.debian.org/debian}" >&2
    tar -C "$root" -c . | docker import --change 'CMD ["python3"]' - python:3.11-slim >&2
    # Like the official image: Redis in /data, protected mode off (other containers of
    # the network connect to it), whatever command the compose file gives.
    docker build -q -t redis:7-alpine - >&2 <<'EOF'
FROM python:3.11-slim
RUN printf '#!/bin/sh\nexec /usr/bin/redis-server "$@" --protected-mode no\n' \
      > /usr/local/bin/redis-server && chmod 755 /usr/local/bin/redis-server \
    && mkdir -p /data
WORKDIR /data
EXPOSE 6379
CMD ["redis-server"]
EOF
}

start_engine
build_stand_ins
log "ready: $(docker version --format 'engine {{.Server.Version}}')"
