#!/bin/sh
# Install what the director's etcd registry needs when it is missing (Debian/Ubuntu, apt-get):
# - `protoc` (Debian `protobuf-compiler`) and the well-known `google/protobuf/*.proto` files it
#   imports (Debian `libprotobuf-dev`, only recommended by protobuf-compiler): the `etcd-client`
#   crate compiles etcd's v3 protobuf definitions at build time;
# - `etcd` (Debian `etcd-server`, etcd 3.4+): the integration tests start real etcd servers.
# Debian's etcd-server starts a system-wide etcd on :2379 where systemd runs; the tests never use
# it (they start their own on free ports).
set -eu
. "$(dirname "$0")/lib.sh"
install_missing etcd-deps protoc:protobuf-compiler \
    /usr/include/google/protobuf/descriptor.proto:libprotobuf-dev etcd:etcd-server
