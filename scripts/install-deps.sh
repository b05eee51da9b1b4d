#!/bin/bash
# Installs the Debian 12 packages vhdnbd needs.  Only what is missing is
# installed, and the packages installed are listed; needs root (or sudo).
#   scripts/install-deps.sh                 to build and run
#   scripts/install-deps.sh --with-clients  also the NBD clients quickstart suggests
#   scripts/install-deps.sh --with-tests    also everything the test suite uses
#   scripts/install-deps.sh --with-bench    also what bench/run uses (and
#                                           matplotlib, for its SVG plots)
set -eu

build_pkgs="build-essential autoconf automake pkg-config libuv1-dev uuid-dev libsystemd-dev libgnutls28-dev"
# nbdinfo (libnbd-bin), qemu-img and qemu-io (qemu-utils), nbd-client.
client_pkgs="libnbd-bin qemu-utils nbd-client"
test_pkgs="$client_pkgs libnbd-dev python3-libnbd nbdkit fio
  libvhdi-utils python3-libvhdi valgrind clang libclang-rt-14-dev systemd gnutls-bin
  qemu-system-x86 busybox-static python3-matplotlib xfsprogs strace
  git dpkg-dev debhelper dh-autoreconf lintian"
bench_pkgs="qemu-utils nbdkit fio python3 python3-matplotlib"

want="$build_pkgs"
for arg in "$@"; do
  case "$arg" in
  --with-clients) want="$want $client_pkgs" ;;
  --with-tests) want="$want $test_pkgs" ;;
  --with-bench) want="$want $bench_pkgs" ;;
  *) echo "usage: $0 [--with-clients] [--with-tests] [--with-bench]" >&2; exit 2 ;;
  esac
done

missing=""
for p in $want; do
  case " $missing " in *" $p "*) continue ;; esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "Installing:$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "Installed:$missing"
