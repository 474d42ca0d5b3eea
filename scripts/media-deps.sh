#!/bin/sh
# Install what the RTMP / HTTP-FLV / HTTP-push tests need when it is missing (Debian/Ubuntu,
# apt-get): `ffmpeg` and `ffprobe` (Debian `ffmpeg`, with libx264 and the lavfi test sources) and
# `curl` (the `curl -T -` push test). Does nothing when they are on PATH. Uses sudo when not root
# and sudo exists.
set -eu
missing=""
{ command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1; } || missing="$missing ffmpeg"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
if [ -z "$missing" ]; then
    echo "media-deps: ffmpeg, ffprobe and curl present"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO=sudo
fi
echo "media-deps: installing$missing"
$SUDO apt-get update -q
# shellcheck disable=SC2086 # word splitting of the package list is intended
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
command -v ffmpeg >/dev/null 2>&1 || { echo "media-deps: ffmpeg still missing" >&2; exit 1; }
echo "media-deps: ok"
