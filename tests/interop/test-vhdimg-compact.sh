#!/bin/bash
# vhdimg compact: images with blocks of zeros (written by vhdimg's engine
# and by QEMU) get shorter, --dry-run predicts it without writing, --json
# reports it, and qemu-img (dynamic) and libvhdi (every type, a chain of 3
# whose zeros over parent data must stay) read the same disk before and
# after; a fixed image and an image being served are refused.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires qemu-img
requires qemu-io
requires_py pyvhdi
requires_write_helper
cd "$TMPD"
dump="$PY3 $top_srcdir/tests/interop/pyvhdi-dump.py"

# reads_as EXPECTED IMAGE [PARENT...]: libvhdi (and qemu-img for a dynamic
# IMAGE) read EXPECTED; vhdimg check finds nothing.
reads_as() {
  local expected=$1 img=$2
  $dump "$img.pyvhdi" "${@:2}" >/dev/null || fail "$img: libvhdi cannot read it"
  cmp "$img.pyvhdi" "$expected" || fail "$img: libvhdi reads different bytes"
  if [ "$(info_field "$img" type)" != differencing ]; then
    qemu-img compare -q -f vpc -F raw "$img" "$expected" || fail "$img: qemu-img compare differs"
  fi
  "$VHDIMG" compare -F raw "$img" "$expected" >/dev/null || fail "$img: vhdimg compare differs"
  "$VHDIMG" check "$img" >/dev/null || fail "$img: vhdimg check"
  rm -f "$img.pyvhdi"
}

json_field() { "$PY3" -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# compact_checked IMAGE FREED MOVED: --dry-run, then compact --json; the
# dry run must predict the result and change nothing; the file must end
# where the result says.
compact_checked() {
  local img=$1 freed=$2 moved=$3 before dry real
  before=$(md5sum <"$img")
  dry=$("$VHDIMG" compact --dry-run --json "$img") || fail "$img: compact --dry-run"
  [ "$(md5sum <"$img")" = "$before" ] || fail "$img: --dry-run changed the file"
  real=$("$VHDIMG" compact --json "$img") || fail "$img: compact"
  for k in blocks-freed blocks-moved file-size-after bytes-reclaimed; do
    [ "$(echo "$dry" | json_field $k)" = "$(echo "$real" | json_field $k)" ] ||
      fail "$img: --dry-run predicted $k $(echo "$dry" | json_field $k), got $(echo "$real" | json_field $k)"
  done
  [ "$(echo "$real" | json_field blocks-freed)" = "$freed" ] || fail "$img: $real; expected $freed blocks freed"
  [ "$(echo "$real" | json_field blocks-moved)" = "$moved" ] || fail "$img: $real; expected $moved blocks moved"
  [ "$(stat -c %s "$img")" = "$(echo "$real" | json_field file-size-after)" ] || fail "$img: file size is not the reported one"
  [ "$(echo "$real" | json_field bytes-reclaimed)" -gt 0 ] || fail "$img: nothing reclaimed"
}

# --- dynamic, written by the engine: zero blocks anywhere ------------------
"$VHDIMG" create -t dynamic --exact d.vhd $((20 * 1024 * 1024 + 512))
"$WRITE_HELPER" d.vhd 0 1M 0x11 2M 2M 0 4M 1M 0 6M 64K 0x22 10M 2M 0 16M 4K 0x33 \
  $((20 * 1024 * 1024 - 512)) 1K 0
make_raw d.raw $((20 * 1024 * 1024 + 512)) 0 1M 0x11 6M 64K 0x22 16M 4K 0x33
reads_as d.raw d.vhd
# blocks 1, 2, 5, 9 and 10 hold only zeros; 8 and 3 move into the places
# of 1 and 2.
compact_checked d.vhd 5 2
reads_as d.raw d.vhd
out=$("$VHDIMG" compact d.vhd)
echo "$out" | grep -q "reclaimed 0 bytes" || fail "a second compaction: $out"

# --- dynamic, written by QEMU ----------------------------------------------
qemu-img create -q -f vpc q.vhd 16M
qemu-io -f vpc -c 'write -q -P 0x44 0 64K' -c 'write -q -P 0 4M 2M' -c 'write -q -P 0x45 12M 4K' q.vhd
size=$(qemu_vsize q.vhd)
make_raw q.raw "$size" 0 64K 0x44 12M 4K 0x45
reads_as q.raw q.vhd
compact_checked q.vhd 1 1
reads_as q.raw q.vhd

# --- a chain of 3 with 4 KiB blocks ------------------------------------------
"$VHDIMG" create -t dynamic --block-size 4K --exact base.vhd $((1024 * 1024 + 1536))
"$WRITE_HELPER" base.vhd 0 64K 0x51
"$VHDIMG" create -b base.vhd mid.vhd
"$WRITE_HELPER" mid.vhd 4K 4K 0 100K 4K 0 200K 8K 0x61
"$VHDIMG" create -b mid.vhd top.vhd
"$WRITE_HELPER" top.vhd 8K 4K 0 300K 4K 0 400K 4K 0x71 500K 4K 0
make_raw chain.raw $((1024 * 1024 + 1536)) 0 64K 0x51 4K 4K 0 8K 4K 0 200K 8K 0x61 400K 4K 0x71
reads_as chain.raw top.vhd mid.vhd base.vhd
# mid: 4K hides base data and stays, 100K is freed, 204K moves into it.
compact_checked mid.vhd 1 1
# top: 8K hides base data and stays, 300K and 500K are freed, 400K moves
# into 300K's place.
compact_checked top.vhd 2 1
reads_as chain.raw top.vhd mid.vhd base.vhd

# --- refusals ----------------------------------------------------------------
"$VHDIMG" create -t fixed f.vhd 1M
expect_exit 1 "$VHDIMG" compact f.vhd 2>err.out
grep -q fixed err.out || { cat err.out >&2; fail "compact of a fixed image: no reason given"; }
expect_exit 2 "$VHDIMG" compact 2>/dev/null
expect_exit 2 "$VHDIMG" compact d.vhd extra 2>/dev/null
if [ -x "$VHDNBD" ]; then
  "$WRITE_HELPER" d.vhd 14M 2M 0
  before=$(md5sum <d.vhd)
  start_vhdnbd "$TMPD/nbd.sock" d.vhd
  expect_exit 1 "$VHDIMG" compact d.vhd 2>err.out
  grep -qi lock err.out || { cat err.out >&2; fail "compact of a served image: not refused by the lock"; }
  stop_vhdnbd
  [ "$(md5sum <d.vhd)" = "$before" ] || fail "a refused compaction changed the image"
fi
echo ok
