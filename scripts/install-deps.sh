#!/bin/bash
# Installs the Debian 12 packages vhdnbd needs to build, run and test.
# Only what is missing is installed; needs root (or sudo).
set -eu

build_pkgs="build-essential autoconf automake pkg-config libuv1-dev uuid-dev libsystemd-dev libgnutls28-dev"
test_pkgs="libnbd-dev libnbd-bin python3-libnbd nbdkit qemu-utils nbd-client fio
  libvhdi-utils python3-libvhdi valgrind clang libclang-rt-14-dev systemd gnutls-bin
  qemu-system-x86 busybox-static
  git dpkg-dev debhelper dh-autoreconf lintian"

want="$build_pkgs"
[ "${1:-}" = "--with-tests" ] && want="$want $test_pkgs"

missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "Installing:$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
