#!/bin/bash
# Installs what is missing (build dependencies and the NBD clients it suggests
# below), builds vhdnbd out of tree under build/quickstart, and serves an image
# on 127.0.0.1:10809.  Safe to run again, and before or after ./run-tests.sh.
# Usage: ./quickstart.sh [IMAGE.vhd]    (without an image, a demo dynamic VHD is made)
set -eu
cd "$(dirname "$0")"
top=$(pwd)

scripts/install-deps.sh --with-clients
if [ ! -x configure ] || [ configure.ac -nt configure ]; then
  out=$(autoreconf -fi 2>&1) || { echo "$out"; echo "quickstart: autoreconf failed" >&2; exit 1; }
fi
# A tree configured in place makes out-of-tree configure refuse to run.
if [ -f config.status ]; then
  make distclean >/dev/null 2>&1 || rm -f config.status Makefile config.h
fi
build="$top/build/quickstart"
mkdir -p "$build"
[ -f "$build/Makefile" ] || (cd "$build" && "$top/configure" -q)
make -C "$build" -j"$(nproc)" >"$build/make.out" 2>&1 || {
  tail -40 "$build/make.out"
  echo "quickstart: the build failed (full log: $build/make.out)" >&2
  exit 1
}

image="${1:-}"
if [ -z "$image" ]; then
  mkdir -p demo
  image=demo/demo.vhd
  if [ ! -f "$image" ]; then
    "$build/vhdimg" create -t dynamic "$image" 1G
    echo "Created a demo 1 GiB dynamic VHD: $image"
  fi
fi

cat <<MSG
Built $build/vhdnbd and $build/vhdimg.
Serving $image on 127.0.0.1:10809 (Ctrl-C stops). Connect with:
  nbdinfo nbd://127.0.0.1
  qemu-img info nbd://127.0.0.1
  qemu-io -f raw -c 'read -v 0 512' nbd://127.0.0.1
  sudo modprobe nbd && sudo nbd-client 127.0.0.1 10809 /dev/nbd0 -N ''
MSG
exec "$build/vhdnbd" -b 127.0.0.1 -p 10809 "$image"
