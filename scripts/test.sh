#!/usr/bin/env bash
# Installs what the tests need (FUSE 3 userspace tools) and runs every test of the workspace:
# unit and property tests, core tests, and integration tests against a real S3-protocol server
# on loopback with real FUSE mounts. Needs /dev/fuse; mounting needs root or fusermount3.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v fusermount3 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
  else
    echo "fusermount3 is missing: install the fuse3 package" >&2
  fi
fi
cargo test --workspace --locked "$@"
