#!/bin/sh
# Install what the wide-area bed (crates/wanbed, `firstmile up --wan`) needs when it is missing
# (Debian/Ubuntu, apt-get): iproute2's `ip` (namespaces are made and removed with `ip netns`).
# The bed also needs root and /dev/net/tun, which no package brings: without them its tests say
# SKIPPED with the reason (WANBED_REQUIRE=1 makes that a failure).
set -eu
. "$(dirname "$0")/lib.sh"
install_missing wanbed-deps ip:iproute2
