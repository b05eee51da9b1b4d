#!/bin/bash
# nbdcopy onto a dynamic image already full of data: every byte is
# overwritten or zeroed, whole zero blocks given up (WRITE_ZEROES/TRIM).  The
# image must then hold the source exactly and be check-clean: no space leaked
# by the blocks given up.  (QEMU ignores sector bitmaps, so the content is
# judged by vhdimg convert, not qemu-img compare.)
. "$top_srcdir/tests/functions.sh"
requires nbdcopy
requires qemu-img

sock=$TMPD/sock
size=$((40 * 1024 * 1024))

truncate -s "$size" "$TMPD/src.raw"
dd if=/dev/urandom of="$TMPD/src.raw" bs=1M seek=0 count=5 conv=notrunc status=none
dd if=/dev/zero of="$TMPD/src.raw" bs=4k seek=300 count=10 conv=notrunc status=none
dd if=/dev/urandom of="$TMPD/src.raw" bs=1M seek=17 count=7 conv=notrunc status=none
head -c "$size" /dev/urandom > "$TMPD/junk.raw"
qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on "$TMPD/junk.raw" "$TMPD/used.vhd"

start_vhdnbd "$sock" "$TMPD/used.vhd"
nbdcopy --connections=4 --flush "$TMPD/src.raw" "nbd+unix:///?socket=$sock" || fail "nbdcopy"
nbdcopy "nbd+unix:///?socket=$sock" - > "$TMPD/out.raw" || fail "nbdcopy back"
cmp "$TMPD/src.raw" "$TMPD/out.raw" || fail "the copy reads back wrong"
stop_vhdnbd

"$VHDIMG" check "$TMPD/used.vhd" || fail "used.vhd is not clean after being overwritten"
"$VHDIMG" convert -O raw "$TMPD/used.vhd" "$TMPD/conv.raw" || fail "vhdimg convert"
cmp "$TMPD/src.raw" "$TMPD/conv.raw" || fail "used.vhd content"
echo PASS
