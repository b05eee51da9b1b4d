#!/bin/bash
# A dynamic image whose file lost its last 1-511 bytes (a copy cut short, a
# file system that lost the tail) has a trailing footer cut inside it, and
# the copy at offset 0 stands in.  QEMU writes the last block right up to
# the footer, so that block ends where the cut footer began, not 512 bytes
# before the cut end.  QEMU reads such an image; vhdimg and vhdnbd must too:
#   check says the trailing footer is damaged (exit 1), --repair rewrites
#   it where it began, and the data is QEMU's;
#   vhdnbd serves the data and takes writes into new blocks, which QEMU
#   reads back;
#   a differencing child whose locator data ends right before the cut
#   footer opens, is repaired and takes writes.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires qemu-io
requires nbdcopy
size=$((3 << 20))
head -c $size /dev/urandom >"$TMPD/data.raw"

make_cut() { # FILE BYTES
  qemu-img convert -q -f raw -O vpc -o subformat=dynamic "$TMPD/data.raw" "$1" ||
    fail "qemu-img convert"
  local full
  full=$(stat -c %s "$1")
  truncate -s -"$2" "$1"
  [ "$(stat -c %s "$1")" -eq $((full - $2)) ] || fail "$1 was not cut"
  echo "$full"
}
qemu_same() { # FILE RAW
  qemu-img convert -q -f vpc -O raw "$1" "$TMPD/qemu.raw" || fail "QEMU cannot read $1"
  cmp -n $size "$TMPD/qemu.raw" "$2" || fail "$1: QEMU reads other data than $2"
}

for cut in 1 300 511; do
  img=$TMPD/cut$cut.vhd
  full=$(make_cut "$img" $cut)
  qemu_same "$img" "$TMPD/data.raw"

  "$VHDIMG" info "$img" >"$TMPD/info" 2>&1 || fail "cut by $cut: vhdimg info: $(cat "$TMPD/info")"
  rc=0
  "$VHDIMG" check "$img" >"$TMPD/check" 2>&1 || rc=$?
  [ "$rc" -eq 1 ] || fail "cut by $cut: check exited $rc, not 1: $(cat "$TMPD/check")"
  grep -q "trailing footer is damaged" "$TMPD/check" ||
    fail "cut by $cut: check does not say why: $(cat "$TMPD/check")"

  start_vhdnbd "$TMPD/s" "$img"
  nbdcopy "nbd+unix:///?socket=$TMPD/s" "$TMPD/served.raw" || fail "cut by $cut: nbdcopy from vhdnbd"
  cmp -n $size "$TMPD/served.raw" "$TMPD/data.raw" || fail "cut by $cut: served data differs"
  stop_vhdnbd

  "$VHDIMG" check --repair "$img" >"$TMPD/repair" 2>&1 ||
    fail "cut by $cut: check --repair: $(cat "$TMPD/repair")"
  [ "$(stat -c %s "$img")" -eq "$full" ] ||
    fail "cut by $cut: repaired file is $(stat -c %s "$img") bytes, not $full"
  "$VHDIMG" check "$img" >"$TMPD/check" 2>&1 || fail "cut by $cut: check after --repair: $(cat "$TMPD/check")"
  qemu_same "$img" "$TMPD/data.raw"
done

# A sparse image cut: new blocks go where the footer began, and the footer
# after them, whole again: check finds nothing to repair, and QEMU reads
# what was written.
qemu-img create -q -f vpc -o subformat=dynamic "$TMPD/sparse.vhd" $size || fail "qemu-img create"
qemu-io -f vpc -c "write -P 0x11 0 64k" "$TMPD/sparse.vhd" >/dev/null || fail "qemu-io write"
truncate -s -100 "$TMPD/sparse.vhd"
start_vhdnbd "$TMPD/s" "$TMPD/sparse.vhd"
nbdcopy "$TMPD/data.raw" "nbd+unix:///?socket=$TMPD/s" || fail "sparse cut image: nbdcopy to vhdnbd"
stop_vhdnbd
"$VHDIMG" check "$TMPD/sparse.vhd" >"$TMPD/check" 2>&1 ||
  fail "sparse cut image: check: $(cat "$TMPD/check")"
qemu_same "$TMPD/sparse.vhd" "$TMPD/data.raw"

# A fresh differencing child keeps its parent locators' data last, right
# before the footer: a cut of up to 511 bytes leaves that data whole, and
# everything is measured from where the footer began, not from the cut
# end.
qemu-img convert -q -f raw -O vpc -o subformat=dynamic "$TMPD/data.raw" "$TMPD/base.vhd" ||
  fail "qemu-img convert"
cp "$TMPD/data.raw" "$TMPD/expect.raw"
printf '\x22%.0s' $(seq 65536) | dd of="$TMPD/expect.raw" bs=64k seek=16 conv=notrunc status=none
for cut in 500 511; do
  child=$TMPD/child$cut.vhd
  "$VHDIMG" create -b "$TMPD/base.vhd" "$child" >/dev/null || fail "vhdimg create -b"
  full=$(stat -c %s "$child")
  truncate -s -$cut "$child"
  "$VHDIMG" info "$child" >"$TMPD/info" 2>&1 ||
    fail "child cut by $cut: vhdimg info: $(cat "$TMPD/info")"
  ! grep -q "beyond the end" "$TMPD/info" ||
    fail "child cut by $cut: its locator data is taken as past the end: $(cat "$TMPD/info")"
  cp "$child" "$TMPD/repaired.vhd"
  "$VHDIMG" check --repair "$TMPD/repaired.vhd" >"$TMPD/repair" 2>&1 ||
    fail "child cut by $cut: check --repair: $(cat "$TMPD/repair")"
  [ "$(stat -c %s "$TMPD/repaired.vhd")" -eq "$full" ] ||
    fail "child cut by $cut: repaired file is $(stat -c %s "$TMPD/repaired.vhd") bytes, not $full"
  start_vhdnbd "$TMPD/s" "$child"
  qemu-io -f raw -c "write -P 0x22 1M 64k" "nbd+unix:///?socket=$TMPD/s" >/dev/null ||
    fail "child cut by $cut: qemu-io write through vhdnbd"
  stop_vhdnbd
  "$VHDIMG" check "$child" >"$TMPD/check" 2>&1 ||
    fail "child cut by $cut: check after writes: $(cat "$TMPD/check")"
  "$VHDIMG" convert -O raw "$child" "$TMPD/child.raw" >/dev/null || fail "vhdimg convert"
  cmp -n $size "$TMPD/child.raw" "$TMPD/expect.raw" || fail "child cut by $cut: data differs"
done
echo "PASS: dynamic and differencing images cut inside their footer are read, served, written and repaired"
