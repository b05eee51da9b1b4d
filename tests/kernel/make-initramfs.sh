#!/bin/bash
# Usage: make-initramfs.sh KERNELDIR INIT OUT [FILE...]
#
# Builds a gzipped newc initramfs OUT for the kernel unpacked in KERNELDIR (as
# fetch-boot-files.sh leaves it): busybox, the host's nbd-client, mke2fs and
# e2fsck with their shared libraries and loader, the modules for NBD, ext4 and
# virtio networking (with their dependencies, in load order in
# /lib/modules/load-order), INIT as /init, and each FILE in /.
#
# BUSYBOX may name the busybox binary to use (default: the one on PATH).
set -eu

kdir=$1
init=$2
out=$3
shift 3

die() {
  echo "make-initramfs: $*" >&2
  exit 1
}

busybox=${BUSYBOX:-$(command -v busybox || true)}
[ -n "$busybox" ] || die "no busybox"

root=$(mktemp -d "${TMPDIR:-/tmp}/initramfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,tmp,mnt,etc,lib/modules}

# Copies a dynamically linked binary into /bin and every library ldd names
# (and the loader) to the same absolute path, so its interpreter path works.
copy_with_libs() {
  local bin=$1 lib
  cp -L "$bin" "$root/bin/"
  for lib in $(ldd "$bin" 2>/dev/null | sed -n 's/.*=> \(\/[^ ]*\).*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p'); do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

for b in "$busybox" nbd-client mke2fs e2fsck; do
  p=$(command -v "$b" || true)
  [ -n "$p" ] || p=$(PATH=/usr/sbin:/sbin:$PATH command -v "$b" || true)
  [ -n "$p" ] || die "$b is not installed"
  copy_with_libs "$p"
done
[ "$(basename "$busybox")" = busybox ] || mv "$root/bin/$(basename "$busybox")" "$root/bin/busybox"
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/"
ln -s mke2fs "$root/bin/mkfs.ext4"
# The other applet links are made by /init (busybox --install), which is
# much faster than hundreds of ln here.
ln -s busybox "$root/bin/sh"
ln -s bin "$root/sbin"

# Modules: the ones wanted plus their depends= closure, dependencies first.
# ext4 and jbd2 only soft-depend on crc32c (loaded through the crypto API),
# which busybox insmod does not follow, so it is named explicitly.
want="crc32c_generic nbd ext4 virtio_pci virtio_net"
moddir=$(ls -d "$kdir"/lib/modules/*/ | head -n 1)
declare -A modfile=() seen=()
while IFS= read -r f; do
  n=$(basename "$f")
  n=${n%%.ko*}
  modfile[${n//-/_}]=$f
done < <(find "$moddir" -name '*.ko*')

builtin_mod() {
  [ -f "$moddir/modules.builtin" ] &&
    sed 's/.*\///; s/\.ko.*//; s/-/_/g' "$moddir/modules.builtin" | grep -qx "$1"
}

# The guest's busybox insmod takes plain .ko files.
plain_ko() {
  case $1 in
  *.ko.xz) xz -dc "$1" ;;
  *.ko.zst) zstd -qdc "$1" ;;
  *.ko.gz) gzip -dc "$1" ;;
  *) cat "$1" ;;
  esac
}

order=()
add_mod() {
  local n=${1//-/_} f deps d
  [ -z "${seen[$n]:-}" ] || return 0
  seen[$n]=1
  f=${modfile[$n]:-}
  if [ -z "$f" ]; then
    builtin_mod "$n" && return 0
    die "module $n is neither in $moddir nor built in"
  fi
  plain_ko "$f" >"$root/lib/modules/$n.ko"
  deps=$(tr '\0' '\n' <"$root/lib/modules/$n.ko" | sed -n 's/^depends=//p' | head -n 1)
  for d in ${deps//,/ }; do
    add_mod "$d"
  done
  order+=("$n")
}
for m in $want; do
  add_mod "$m"
done
printf '%s\n' "${order[@]}" >"$root/lib/modules/load-order"

cp "$init" "$root/init"
chmod 755 "$root/init"
for f in "$@"; do
  cp "$f" "$root/"
done

(cd "$root" && find . | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -1 >"$out"
