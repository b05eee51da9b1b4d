#!/bin/bash
# Installs what is missing, builds vhdnbd and serves an image on 127.0.0.1:10809.
# Usage: ./quickstart.sh [IMAGE.vhd]    (without an image, a demo dynamic VHD is made)
set -eu
cd "$(dirname "$0")"

scripts/install-deps.sh
[ -x configure ] || autoreconf -fi
[ -f Makefile ] || ./configure
make -j"$(nproc)"

image="${1:-}"
if [ -z "$image" ]; then
  mkdir -p demo
  image=demo/demo.vhd
  if [ ! -f "$image" ]; then
    ./vhdimg create -t dynamic "$image" 1G
    echo "Created a demo 1 GiB dynamic VHD: $image"
  fi
fi

cat <<MSG
Serving $image on 127.0.0.1:10809 (Ctrl-C stops). Connect with:
  nbdinfo nbd://127.0.0.1
  qemu-img info nbd://127.0.0.1
  qemu-io -f raw -c 'read -v 0 512' nbd://127.0.0.1
  sudo modprobe nbd && sudo nbd-client 127.0.0.1 10809 /dev/nbd0 -N ''
MSG
exec ./vhdnbd -b 127.0.0.1 -p 10809 "$image"
