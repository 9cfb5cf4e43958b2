#!/usr/bin/env bash
# Make sure the local base image debian:bookworm-slim exists.
# Order: already present -> docker pull -> debootstrap + docker import
# (the last one works on machines that reach a Debian mirror but no registry).
set -euo pipefail

IMAGE="${BASE_IMAGE:-debian:bookworm-slim}"

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

echo "base-image: debootstrap bookworm from $mirror" >&2
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
# Slim the rootfs the way the official image does: no apt lists, no caches.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
tar -C "$rootfs" -c . | docker import - "$IMAGE" >/dev/null
echo "base-image: imported $IMAGE" >&2
