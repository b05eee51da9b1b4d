#!/bin/bash
# A server killed after it moved the footer for new blocks leaves that
# allocation window (tens of MiB no reader sees) before the footer.  Served
# again, the image takes the window as its own: the next new block goes
# right after the last block in use, not past the window, and a clean stop
# gives the rest back.  Before, every crash cost a window for good.
# QEMU writes through NBD and reads the file afterwards; vhdimg check must
# find it clean.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires qemu-io
requires qemu-img
requires_py nbd

img=$TMPD/w.vhd
sock=$TMPD/sock
uri="nbd+unix:///?socket=$sock"
M=$((1024 * 1024))
# 64 KiB blocks: growing the disk then grows the BAT past its sector, over
# the first blocks, which move.
"$VHDIMG" create -t dynamic --block-size 64K --exact "$img" $((64 * M)) >/dev/null

qemu_write() { # PATTERN OFFSET LENGTH
  qemu-io -f raw -c "write -q -P $1 $2 $3" -c flush "$uri" >"$TMPD/qemu-io.out" 2>&1 ||
    fail "qemu-io write $*: $(cat "$TMPD/qemu-io.out")"
  ! grep -q "failed" "$TMPD/qemu-io.out" || fail "qemu-io write $*: $(cat "$TMPD/qemu-io.out")"
}

start_vhdnbd "$sock" "$img" 2>"$TMPD/server1.log"
qemu_write 0x41 0 $((4 * M))
# A third block written and never flushed: its data reaches the file, its
# BAT entry does not (the kill comes first).  It lies where the next block
# will go, and must not show through that block's unwritten sectors.
"$PY3" - "$sock" <<'PYEOF' || fail "the unflushed write failed"
import sys, nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
h.pwrite(b"\x43" * (2 << 20), 10 << 20)
PYEOF
kill -KILL "$VHDNBD_PID"
wait "$VHDNBD_PID" 2>/dev/null || true
crashed=$(stat -c %s "$img")
# 64 blocks (and their bitmaps) are in use, 32 more were lost;
# the window reaches on.
[ "$crashed" -gt $((32 * M)) ] ||
  skip "the killed server left no allocation window ($crashed bytes): nothing to reuse"
rc=0
"$VHDIMG" check "$img" >"$TMPD/check1.out" 2>&1 || rc=$?
[ "$rc" = 0 ] || [ "$rc" = 3 ] || fail "check after the kill: exit $rc: $(cat "$TMPD/check1.out")"

# vhdimg resize on the crashed image: the footer with the new size must
# end the file (the window is the image's own now, but the footer stays
# past it), for vhdimg and QEMU alike.
cp "$img" "$TMPD/grown.vhd"
"$VHDIMG" resize "$TMPD/grown.vhd" $((128 * M)) >/dev/null || fail "resize of the crashed image"
vs=$(info_field "$TMPD/grown.vhd" virtual-size)
qs=$(qemu-img info --output=json -f vpc "$TMPD/grown.vhd" |
  "$PY3" -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])')
[ "$vs" -ge $((128 * M)) ] && [ "$qs" = "$vs" ] ||
  fail "after the resize vhdimg reads $vs bytes, QEMU $qs (128 MiB asked)"
"$VHDIMG" check "$TMPD/grown.vhd" >"$TMPD/check-grown.out" 2>&1 ||
  fail "check of the grown image: $(cat "$TMPD/check-grown.out")"
make_raw "$TMPD/grown.raw" "$vs" 0 4M 0x41
qemu-img compare -q -f vpc -F raw "$TMPD/grown.vhd" "$TMPD/grown.raw" ||
  fail "the grown image does not read what was written"

start_vhdnbd "$sock" "$img" 2>"$TMPD/server2.log"
qemu_write 0x42 $((40 * M)) 4096
stop_vhdnbd
size=$(stat -c %s "$img")
# 65 blocks in use: well under 8 MiB with the header and the BAT.
[ "$size" -lt $((8 * M)) ] ||
  fail "after a restart and a clean stop the file is $size bytes (it was $crashed after the kill): the window the crash left was not reused and given back"
"$VHDIMG" check "$img" >"$TMPD/check2.out" 2>&1 ||
  fail "check after the clean stop: $(cat "$TMPD/check2.out")"
# QEMU reads a block's data area whatever its bitmap says: the 60 KiB of
# the block never written reads zeros, not the lost blocks' bytes.
make_raw "$TMPD/w.raw" $((64 * M)) 0 4M 0x41 40M 4K 0x42
qemu-img compare -q -f vpc -F raw "$img" "$TMPD/w.raw" ||
  fail "QEMU does not read what was written (a lost block's bytes show through a new one?)"
"$VHDIMG" compare -F raw "$img" "$TMPD/w.raw" >/dev/null || fail "vhdimg does not read what was written"
echo "ok: $crashed bytes after the kill, $size after a restart and a clean stop"
