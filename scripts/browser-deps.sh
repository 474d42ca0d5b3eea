#!/bin/sh
# Install what the browser tests need when it is missing (Debian/Ubuntu, apt-get): a headless
# Chromium (Debian `chromium`, which plays H.264/AAC through Media Source Extensions). The tests
# drive it over the DevTools protocol (crates/entry/tests/browser/) or headless with a
# screenshot (crates/director/tests/dashboard/).
set -eu
. "$(dirname "$0")/lib.sh"
install_missing browser-deps chromium:chromium
