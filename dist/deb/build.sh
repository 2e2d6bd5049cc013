#!/usr/bin/env bash
# Builds the Debian package: the binary, man pages, shell completions, the systemd unit and a
# sample config.
#   dist/deb/build.sh                      # release build, package in target/debian/
#   dist/deb/build.sh --binary PATH        # package an already built binary
#   dist/deb/build.sh --out DIR            # write the .deb into DIR
#   dist/deb/build.sh --compress none      # skip compressing the archive (xz by default)
# The binary is installed without its debug sections (strip --strip-debug).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="" out="target/debian" compress=xz
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) bin=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --compress) compress=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$bin" ]; then
  cargo build --release --locked -p pai-mount
  bin=target/release/pai-mount
fi
version=$("$bin" --version | awk "{print \$2}")
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$bin" "$root/usr/bin/pai-mount"
strip --strip-debug "$root/usr/bin/pai-mount"
mkdir -p "$root/usr/share/man/man1"
"$bin" man "$root/usr/share/man/man1"
gzip -9n "$root"/usr/share/man/man1/*.1
install -d "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d"
"$bin" completions bash > "$root/usr/share/bash-completion/completions/pai-mount"
"$bin" completions zsh > "$root/usr/share/zsh/vendor-completions/_pai-mount"
"$bin" completions fish > "$root/usr/share/fish/vendor_completions.d/pai-mount.fish"
install -d "$root/lib/systemd/system"
sed 's|/usr/local/bin/pai-mount|/usr/bin/pai-mount|' dist/systemd/pai-mount@.service \
  > "$root/lib/systemd/system/pai-mount@.service"
install -D -m 0644 dist/config.toml.example "$root/usr/share/doc/pai-mount/examples/config.toml"
for d in README.md docs/OPERATIONS.md docs/CONFIGURATION.md; do
  install -m 0644 "$d" "$root/usr/share/doc/pai-mount/"
done
install -d -m 0755 "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: pai-mount
Version: $version
Architecture: $arch
Maintainer: pai-mount developers <pai-mount@localhost>
Depends: fuse3, libc6
Section: utils
Priority: optional
Installed-Size: $size
Description: mount object storage (OSS, S3) as a local directory
 A FUSE daemon serving a bucket prefix from a manifest, with prefetch, a
 checksummed disk cache and crash-safe write-back; a parallel copier and a
 data-loader library. fstab: type fuse.pai-mount; systemd: pai-mount@NAME.
CONTROL
mkdir -p "$out"
deb="$out/pai-mount_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compress" --build "$root" "$deb" >/dev/null
echo "$deb"
