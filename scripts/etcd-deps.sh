#!/bin/sh
# Install what the director's etcd registry needs when it is missing (Debian/Ubuntu, apt-get):
# - `protoc` (Debian `protobuf-compiler`) and the well-known `google/protobuf/*.proto` files it
#   imports (Debian `libprotobuf-dev`, only recommended by protobuf-compiler): the `etcd-client`
#   crate compiles etcd's v3 protobuf definitions at build time;
# - `etcd` (Debian `etcd-server`, etcd 3.4+): the integration tests start real etcd servers.
# Does nothing when both are on PATH. Uses sudo when not root and sudo exists.
set -eu
missing=""
command -v protoc >/dev/null 2>&1 || missing="$missing protobuf-compiler"
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing="$missing libprotobuf-dev"
command -v etcd >/dev/null 2>&1 || missing="$missing etcd-server"
if [ -z "$missing" ]; then
    echo "etcd-deps: protoc, protobuf includes and etcd present"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO=sudo
fi
echo "etcd-deps: installing$missing"
$SUDO apt-get update -q
# shellcheck disable=SC2086 # word splitting of the package list is intended
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
# Debian's etcd-server starts a system-wide etcd on :2379 through its service unit where systemd
# runs; the tests never use it (they start their own on free ports), so leave it as it is.
command -v protoc >/dev/null 2>&1 || { echo "etcd-deps: protoc still missing" >&2; exit 1; }
command -v etcd >/dev/null 2>&1 || { echo "etcd-deps: etcd still missing" >&2; exit 1; }
echo "etcd-deps: ok"
