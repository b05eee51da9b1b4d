#!/bin/bash
# Usage: fetch-boot-files.sh CACHEDIR
#
# Makes sure CACHEDIR holds the boot files of the Debian kernel that the
# linux-image-amd64 metapackage currently points at, and prints the directory
# holding them (boot/vmlinuz-* and lib/modules/VERSION/...).  Only the modules
# the guest can need are kept: the whole package unpacks to ~400 MB.
#
# The package is fetched with apt-get download (no installation), once; later
# runs reuse the cache.  Exits 77 with a reason when the kernel cannot be
# obtained (no apt, no network, no such package), so the test can skip.
set -eu

cache=$1
mkdir -p "$cache"

skip() {
  echo "SKIP: $*" >&2
  exit 77
}

for c in apt-cache apt-get dpkg-deb tar flock; do
  command -v "$c" >/dev/null 2>&1 || skip "$c is not available to fetch a Debian kernel"
done

# Two concurrent runs must not fill the same cache directory.
exec 9>"$cache/.lock"
flock -w 600 9 || skip "timed out waiting for the lock on $cache"

# linux-image-amd64 depends on exactly one versioned image package, pinned:
# "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)".  One apt-cache call:
# loading its cache is what takes time here.
dep=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
  sed -n 's/^Depends: \(linux-image-[0-9][^ ,]*\)\( (= \([^)]*\))\)\{0,1\}.*/\1 \3/p' | head -n 1)
read -r pkg ver <<<"$dep" || true
[ -n "${pkg:-}" ] || skip "apt-cache knows no linux-image-amd64 (run apt-get update?)"
if [ -z "${ver:-}" ]; then
  ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)
  [ -n "$ver" ] || skip "apt-cache has no version of $pkg"
fi

dir="$cache/${pkg}_$ver"
if [ -f "$dir/.complete" ]; then
  echo "$dir"
  exit 0
fi

rm -rf "$dir"
work=$(mktemp -d "$cache/fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

if ! (cd "$work" && apt-get download "$pkg=$ver") >"$work/download.log" 2>&1; then
  sed 's/^/  /' "$work/download.log" >&2
  skip "apt-get download $pkg=$ver failed"
fi
deb=$(find "$work" -maxdepth 1 -name '*.deb' | head -n 1)
[ -n "$deb" ] || skip "apt-get download $pkg left no .deb"

# Patterns that match nothing make tar exit 2 after extracting the rest; the
# files we really need are checked right after.
mkdir "$work/x"
pats=('./boot/vmlinuz-*' './boot/config-*')
for lib in ./lib ./usr/lib; do
  for p in modules.builtin modules.order kernel/drivers/block/'*.ko*' \
    kernel/drivers/net/'*.ko*' kernel/drivers/net/ethernet/intel/e1000/'*.ko*' \
    kernel/drivers/virtio/'*.ko*' kernel/fs/'*.ko*' kernel/fs/ext4/'*.ko*' \
    kernel/fs/jbd2/'*.ko*' kernel/lib/'*.ko*' kernel/crypto/'*.ko*' \
    kernel/net/core/'*.ko*'; do
    pats+=("$lib/modules/*/$p")
  done
done
dpkg-deb --fsys-tarfile "$deb" |
  tar -x -C "$work/x" --wildcards --no-wildcards-match-slash "${pats[@]}" \
    2>"$work/tar.log" || true

# Debian 12 ships /lib/modules in the package; later releases use /usr/lib.
if [ ! -d "$work/x/lib/modules" ] && [ -d "$work/x/usr/lib/modules" ]; then
  mv "$work/x/usr/lib" "$work/x/lib"
fi
ls "$work/x"/boot/vmlinuz-* >/dev/null 2>&1 || {
  cat "$work/tar.log" >&2
  skip "$pkg has no boot/vmlinuz-*"
}
ls -d "$work/x"/lib/modules/*/kernel >/dev/null 2>&1 || {
  cat "$work/tar.log" >&2
  skip "$pkg has no lib/modules/*/kernel"
}

mv "$work/x" "$dir"
touch "$dir/.complete"
echo "$dir"
