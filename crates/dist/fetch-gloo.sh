#!/usr/bin/env bash
# Unpacks Gloo's headers (Debian's libgloo-dev) into $1 without root: `apt-get download` +
# `dpkg-deb -x`. Nothing is installed system-wide and nothing enters the repository; the torch
# wheel has Gloo compiled in but ships no Gloo headers, which c10d's ProcessGroupGloo.hpp needs.
set -euo pipefail
dest=${1:?usage: fetch-gloo.sh DEST}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
if [ -e "$dest/usr/include/gloo/context.h" ]; then
    exit 0
fi
for tool in apt-get dpkg-deb; do
    if ! command -v "$tool" >/dev/null; then
        echo "fetch-gloo.sh: $tool not found: on a non-Debian system install Gloo's headers" \
             "(libgloo-dev or gloo from source) and set LORAPLUS_GLOO_INCLUDE to the folder" \
             "holding gloo/" >&2
        exit 1
    fi
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
if ! apt-get download libgloo-dev >apt.log 2>&1; then
    # Empty package lists (a fresh container): refresh them into a private folder, no root needed.
    lists="$tmp/lists"
    mkdir -p "$lists/partial" "$tmp/cache/archives/partial"
    opts=(-o "Dir::State::Lists=$lists" -o "Dir::Cache=$tmp/cache" -o Debug::NoLocking=1)
    if ! apt-get "${opts[@]}" update >>apt.log 2>&1 ||
       ! apt-get "${opts[@]}" download libgloo-dev >>apt.log 2>&1; then
        cat apt.log >&2
        echo "fetch-gloo.sh: could not download libgloo-dev (above: apt's messages). It is in" \
             "Debian >= 12 and Ubuntu >= 22.04; elsewhere set LORAPLUS_GLOO_INCLUDE to a folder" \
             "holding Gloo's headers (gloo/)" >&2
        exit 1
    fi
fi
dpkg-deb -x libgloo-dev_*.deb "$dest"
test -e "$dest/usr/include/gloo/context.h"
echo "Gloo headers: $dest/usr/include"
