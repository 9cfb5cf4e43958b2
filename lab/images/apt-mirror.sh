#!/usr/bin/env bash
# Print the Debian mirror URL of this machine's apt sources (one-line or
# deb822 format; security mirrors skipped), else deb.debian.org.
# Used by base-image.sh (debootstrap) and .ci/bootstrap (trixie's compose).
set -euo pipefail
url=""
if [ -r /etc/apt/sources.list ]; then
    url=$(awk '$1 == "deb" && $0 !~ /security/ {
               for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) { print $i; exit }
           }' /etc/apt/sources.list)
fi
if [ -z "$url" ]; then
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        url=$(awk '$1 == "URIs:" && $2 !~ /security/ { print $2; exit }' "$f")
        [ -n "$url" ] && break
    done
fi
echo "${url:-http://deb.debian.org/debian}"
