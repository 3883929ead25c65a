#!/usr/bin/env bash
# Builds the sandbox images without pulling from any registry: debootstrap a minimal
# bookworm rootfs from the Debian mirror this machine's apt uses, `docker import` it,
# then build images/Dockerfile on top. Pass --from-registry to build the same
# Dockerfile FROM debian:bookworm-slim instead.
#
# Env: IMAGE (default sandbox-runner:latest), DS_IMAGE (sandbox-runner-datascience:latest),
#      BASE_IMAGE (sandbox-base:bookworm), MIRROR (default: from /etc/apt), SKIP_DS=1.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-sandbox-runner:latest}
DS_IMAGE=${DS_IMAGE:-sandbox-runner-datascience:latest}
BASE_IMAGE=${BASE_IMAGE:-sandbox-base:bookworm}
log() { printf 'build_images: %s\n' "$*" >&2; }

apt_mirror() {
    local uri
    # deb822 sources first (Debian 12's default), then the one-line format.
    uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
        | grep -v security | head -n1 || true)
    if [[ -z "$uri" ]]; then
        uri=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
            | grep -v security | head -n1 || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

base=debian:bookworm-slim
if [[ "${1:-}" != "--from-registry" ]]; then
    base=$BASE_IMAGE
    if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        command -v debootstrap >/dev/null || { log "debootstrap is not installed"; exit 1; }
        mirror=${MIRROR:-$(apt_mirror)}
        root=$(mktemp -d /var/tmp/sandbox-rootfs.XXXXXX)
        trap 'rm -rf "$root"' EXIT
        log "debootstrap bookworm from $mirror (about a minute)"
        debootstrap --variant=minbase --include=python3-minimal bookworm "$root" "$mirror" \
            >/tmp/sandbox-debootstrap.log 2>&1 \
            || { tail -n 20 /tmp/sandbox-debootstrap.log >&2; exit 1; }
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        log "importing the rootfs as $BASE_IMAGE"
        tar -C "$root" -c . | docker import - "$BASE_IMAGE" >/dev/null
        rm -rf "$root"
        trap - EXIT
    fi
fi

# --network=host: the RUN steps reach the Debian mirror the way this machine does.
# The context is the repository root: the runner image copies the host's
# sandbox/backends/container/protocol.py beside the runner. .dockerignore keeps the
# context to the files the Dockerfiles copy.
log "building $IMAGE from $base"
docker build --quiet --network=host --build-arg "BASE=$base" -t "$IMAGE" \
    -f images/Dockerfile . >/dev/null
if [[ "${SKIP_DS:-}" != 1 ]]; then
    log "building $DS_IMAGE"
    docker build --quiet --network=host --build-arg "BASE=$IMAGE" -t "$DS_IMAGE" \
        -f images/Dockerfile.datascience . >/dev/null
fi
log "done: $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
    | grep -E "^(${IMAGE%%:*}|${DS_IMAGE%%:*}):" | tr '\n' ' ')"
