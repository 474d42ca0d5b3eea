#!/bin/sh
# Install what the director's etcd tests need when it is missing (Debian/Ubuntu, apt-get):
# `etcd` (Debian `etcd-server`, etcd 3.4+): the integration tests start real etcd servers. Building
# needs nothing: the etcd client's generated gRPC code is committed (vendor/README.md), no protoc.
# Debian's etcd-server starts a system-wide etcd on :2379 where systemd runs; the tests never use
# it (they start their own on free ports).
set -eu
. "$(dirname "$0")/lib.sh"
install_missing etcd-deps etcd:etcd-server
