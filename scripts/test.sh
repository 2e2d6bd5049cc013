#!/usr/bin/env bash
# Installs what the tests need and runs every test of the project:
# - Rust: unit and property tests, core tests, and integration tests against a real
#   S3-protocol server on loopback with real FUSE mounts (needs /dev/fuse; mounting needs
#   root or fusermount3; fstab tests through the real mount(8); the fuse3, systemd and procps
#   packages are installed when missing and we are root);
# - Python: the pai_mount package, built and installed from ./python, and its tests with real
#   torch DataLoaders and worker processes (torch, torchdata and pytest are installed from
#   python/requirements-test.txt, pinned).
# Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
# fuse3: fusermount3 and mount.fuse3 (the fstab tests run the real mount(8));
# systemd: systemd-analyze, which checks the shipped unit; procps: pgrep.
missing=()
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v pgrep >/dev/null 2>&1 || missing+=(procps)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing packages: ${missing[*]}" >&2
  fi
fi
# promtool checks the metrics endpoint's output: Debian's prometheus package, unpacked into a
# cache (not installed: that would start a server).
if [ -z "${PAI_PROMTOOL:-}" ]; then
  if command -v promtool >/dev/null 2>&1; then
    PAI_PROMTOOL=$(command -v promtool)
  else
    tools="$HOME/.cache/pai-mount/tools"
    if [ ! -x "$tools/x/usr/bin/promtool" ]; then
      mkdir -p "$tools"
      (cd "$tools" && { apt-get download -qq prometheus 2>/dev/null ||
        { apt-get update -qq && apt-get download -qq prometheus; }; } &&
        dpkg-deb -x prometheus_*.deb x && rm -f prometheus_*.deb)
    fi
    PAI_PROMTOOL="$tools/x/usr/bin/promtool"
  fi
fi
export PAI_PROMTOOL
cargo test --workspace --locked "$@"

PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
PIP=("$PY" -m pip)
"${PIP[@]}" install -q -r python/requirements-test.txt
# The extension's release build is kept between runs on one machine (it takes minutes).
export CARGO_TARGET_DIR=${PAI_PYTHON_TARGET_DIR:-$HOME/.cache/pai-mount/python-target}
"${PIP[@]}" install -q --force-reinstall --no-deps ./python
unset CARGO_TARGET_DIR
cargo build --locked -q -p pai-test-s3
# Run from the tests directory, so the installed package is what gets imported. pytest's
# exit code 5 (no tests collected) fails this script like any other failure.
(cd python/tests && PAI_TEST_S3="$PWD/../../target/debug/pai-test-s3" "$PY" -m pytest -q -p no:cacheprovider)
