#!/bin/bash
# nbdcopy in both directions and between two exports of one server, with
# several connections (multi-conn) and many requests in flight; then the
# images are check-clean and equal to the source (qemu-img compare).
. "$top_srcdir/tests/functions.sh"
requires nbdcopy
requires qemu-img

sock=$TMPD/sock
size=$((40 * 1024 * 1024))

# Data with holes, runs of zeros inside data, an unaligned end of data.
truncate -s "$size" "$TMPD/src.raw"
dd if=/dev/urandom of="$TMPD/src.raw" bs=1M seek=0 count=5 conv=notrunc status=none
dd if=/dev/zero of="$TMPD/src.raw" bs=4k seek=300 count=10 conv=notrunc status=none
dd if=/dev/urandom of="$TMPD/src.raw" bs=1M seek=17 count=7 conv=notrunc status=none
dd if=/dev/urandom of="$TMPD/src.raw" bs=1 seek=$((size - 12345)) count=1000 conv=notrunc status=none

head -c "$size" /dev/urandom > "$TMPD/junk.raw"

for t in dynamic fixed; do
  qemu-img create -q -f vpc -o subformat=$t,force_size=on "$TMPD/a-$t.vhd" "$size"
  # A fixed b starts full of random data so the copy must overwrite or zero
  # every byte (test-nbdcopy-overwrite.sh does that to a dynamic image).
  if [ "$t" = fixed ]; then
    qemu-img convert -q -f raw -O vpc -o subformat=$t,force_size=on "$TMPD/junk.raw" "$TMPD/b-$t.vhd"
  else
    qemu-img create -q -f vpc -o subformat=$t,force_size=on "$TMPD/b-$t.vhd" "$size"
  fi

  start_vhdnbd "$sock" -e "a=$TMPD/a-$t.vhd" -e "b=$TMPD/b-$t.vhd"
  a="nbd+unix:///a?socket=$sock"
  b="nbd+unix:///b?socket=$sock"

  nbdcopy --connections=4 --requests=32 --flush "$TMPD/src.raw" "$a" || fail "$t: nbdcopy file -> a"
  nbdcopy --connections=1 "$a" "$TMPD/out.raw" || fail "$t: nbdcopy a -> file"
  cmp "$TMPD/src.raw" "$TMPD/out.raw" || fail "$t: a read back differs"
  nbdcopy --connections=4 --flush "$a" "$b" || fail "$t: nbdcopy a -> b"
  nbdcopy "$b" - > "$TMPD/out-b.raw" || fail "$t: nbdcopy b -> stdout"
  cmp "$TMPD/src.raw" "$TMPD/out-b.raw" || fail "$t: b read back differs"
  stop_vhdnbd

  for img in a b; do
    "$VHDIMG" check "$TMPD/$img-$t.vhd" || fail "$img-$t.vhd is not clean"
    "$VHDIMG" convert -O raw "$TMPD/$img-$t.vhd" "$TMPD/conv.raw" || fail "vhdimg convert $img-$t.vhd"
    cmp "$TMPD/src.raw" "$TMPD/conv.raw" || fail "$img-$t.vhd content"
  done
  for img in a b; do
    qemu-img compare -f vpc -F raw "$TMPD/$img-$t.vhd" "$TMPD/src.raw" ||
      fail "$img-$t.vhd content (qemu)"
  done
  rm -f "$TMPD/out.raw" "$TMPD/out-b.raw" "$TMPD/conv.raw"
done
echo PASS
