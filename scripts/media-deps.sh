#!/bin/sh
# Install what the RTMP / HTTP-FLV / HTTP-push tests need when it is missing (Debian/Ubuntu,
# apt-get): `ffmpeg` and `ffprobe` (Debian `ffmpeg`, with libx264 and the lavfi test sources) and
# `curl` (the `curl -T -` push test).
set -eu
. "$(dirname "$0")/lib.sh"
install_missing media-deps ffmpeg:ffmpeg ffprobe:ffmpeg curl:curl
