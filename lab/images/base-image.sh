#!/usr/bin/env bash
# Make sure the local base image debian:SUITE-slim exists (SUITE: bookworm
# unless given, e.g. `base-image.sh trixie` for the PostgreSQL 17 image).
# Order: already present -> docker pull -> debootstrap + docker import
# (the last one works on machines that reach a Debian mirror but no registry).
set -euo pipefail

SUITE="${1:-bookworm}"
IMAGE="${BASE_IMAGE:-debian:$SUITE-slim}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    exit 0
fi

if docker pull "$IMAGE" >/dev/null 2>&1; then
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "base-image: cannot pull $IMAGE and debootstrap is missing (apt-get install debootstrap)" >&2
    exit 1
fi

mirror=$("$(dirname "$0")/apt-mirror.sh")
rootfs=$(mktemp -d /var/tmp/qadhya-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

echo "base-image: debootstrap $SUITE from $mirror" >&2
# The suite's own sources go into the rootfs only: this machine's apt
# sources are never touched, whatever suite the image is built from.
debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >/dev/null
# Slim the rootfs the way the official image does: no apt lists, no caches.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
tar -C "$rootfs" -c . | docker import - "$IMAGE" >/dev/null
echo "base-image: imported $IMAGE" >&2
