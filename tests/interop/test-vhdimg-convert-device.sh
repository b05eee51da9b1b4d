#!/bin/bash
# vhdimg convert -O raw onto a block device (a loop device over a file full
# of 0xAA): the device reads exactly as the source over the virtual size,
# the zeros of the source included (skipped on a sparse file, they must be
# written to a device), the rest of the device is left alone; and a mounted
# device is refused (exclusive open), its file system untouched.  Needs
# root and loop devices; skips otherwise.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires losetup
[ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root for a loop device" >&2; exit 77; }
cd "$TMPD"

"$PY3" -c "open('back.img', 'wb').write(b'\xaa' * (8 << 20))"
if ! dev=$(losetup -f --show back.img 2>losetup.err); then
  echo "SKIP: no loop device: $(cat losetup.err)" >&2
  exit 77
fi
cleanup_fn losetup -d "$dev"

# A dynamic VHD of 4 MiB with data in two places: the rest reads as zeros
# (unallocated blocks, and zeros inside allocated ones).
"$VHDIMG" create src.vhd 4M >/dev/null
qemu-io -f vpc -c 'write -P 0x11 0 64k' -c 'write -P 0x22 2100k 8k' src.vhd >/dev/null
qemu-img convert -f vpc -O raw src.vhd want.raw
vsize=$(stat -c %s want.raw)

"$VHDIMG" convert -O raw src.vhd "$dev" || fail "convert onto $dev failed"
head -c "$vsize" "$dev" >got.raw
cmp want.raw got.raw || fail "$dev does not read as the source over its $vsize bytes" \
  "(first differing byte: $(cmp want.raw got.raw | head -1))"
tail -c +$((vsize + 1)) "$dev" | "$PY3" -c "
import sys
rest = sys.stdin.buffer.read()
assert rest and rest == b'\xaa' * len(rest), 'the device past the virtual size changed'
" || fail "the device past the virtual size was written"
echo "ok convert onto $dev: the source's zeros written, the rest of the device kept"

# Mounted: refused, and the file system stays as it was.
if command -v mkfs.ext4 >/dev/null && mkfs.ext4 -q -F "$dev" >/dev/null 2>&1 &&
  mkdir -p mnt && mount "$dev" mnt 2>/dev/null; then
  cleanup_fn umount -l "$TMPD/mnt"
  echo canary >mnt/canary
  sync
  before=$(md5sum <"$dev")
  if "$VHDIMG" convert -O raw src.vhd "$dev" 2>err.txt; then
    fail "convert onto the mounted $dev succeeded"
  fi
  grep -q "in use" err.txt || fail "the refusal does not say the device is in use: $(cat err.txt)"
  [ "$(md5sum <"$dev")" = "$before" ] || fail "the refused convert changed the mounted $dev"
  [ "$(cat mnt/canary)" = canary ] || fail "the file system on $dev lost its file"
  echo "ok a mounted device is refused: $(cat err.txt)"
else
  echo "note: could not make and mount a file system on $dev: mounted-device case not run"
fi
