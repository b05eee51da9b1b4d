#!/bin/bash
# The footer's saved-state flag: a virtual machine was saved with the disk,
# and the VHD format forbids compacting or expanding such a disk.  vhdimg
# compact and resize refuse it (naming the flag, the file untouched) unless
# --ignore-saved-state, a dry run still reports, the flag survives the
# commands that are let through, and vhdnbd warns when it serves such an
# image writable (not read-only).
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
cd "$TMPD"
sock=$TMPD/sock

"$VHDIMG" create -t dynamic img.vhd 8M >/dev/null || fail "vhdimg create"
# Data in block 0, zeros written into block 2: compact has a block to free.
"$WRITE_HELPER" img.vhd 0 64K 0x5a 4M 64K 0x00 || fail "writing the image"
# set_saved_state FILE: the flag set in both footers, checksums fixed.
"$PY3" - img.vhd <<'PYEOF' || fail "setting the saved-state flag"
import struct, sys
path = sys.argv[1]
with open(path, "r+b") as f:
    size = f.seek(0, 2)
    for off in (0, size - 512):
        f.seek(off)
        foot = bytearray(f.read(512))
        foot[84] = 1
        foot[64:68] = bytes(4)
        foot[64:68] = struct.pack(">I", ~sum(foot) & 0xFFFFFFFF)
        f.seek(off)
        f.write(foot)
PYEOF
[ "$(info_field img.vhd saved-state)" = True ] || fail "info does not show the saved-state flag"
"$VHDIMG" check img.vhd >/dev/null || fail "the saved-state image does not check clean"
cp img.vhd before.vhd

# refused CMD...: exits 1 naming the flag, the file unchanged.
refused() {
  expect_exit 1 "$VHDIMG" "$@" 2>err.out
  grep -q "saved-state flag" err.out || { cat err.out >&2; fail "$1: the refusal does not name the saved-state flag"; }
  grep -q "img.vhd" err.out || { cat err.out >&2; fail "$1: the refusal does not name the file"; }
  cmp -s img.vhd before.vhd || fail "$1: a refused command changed the image"
}
refused compact img.vhd
refused resize img.vhd 16M
refused resize --shrink --exact img.vhd 6M
"$VHDIMG" compact --dry-run img.vhd | grep -q "would reclaim" || fail "compact --dry-run"
cmp -s img.vhd before.vhd || fail "compact --dry-run changed the image"

"$VHDIMG" compact --ignore-saved-state img.vhd >/dev/null || fail "compact --ignore-saved-state"
"$VHDIMG" resize --ignore-saved-state --exact img.vhd 16M >/dev/null ||
  fail "resize --ignore-saved-state"
[ "$(info_field img.vhd virtual-size)" = 16777216 ] || fail "the forced resize did not happen"
[ "$(info_field img.vhd saved-state)" = True ] || fail "the saved-state flag was lost"
"$VHDIMG" check img.vhd >/dev/null || fail "the forced image does not check clean"
make_raw want.raw 16M 0 64K 0x5a
"$VHDIMG" compare -F raw img.vhd want.raw >/dev/null || fail "the forced commands changed what the disk reads"

start_vhdnbd "$sock" img.vhd 2>served.log
stop_vhdnbd
grep -q "saved-state flag set" served.log || { cat served.log >&2; fail "vhdnbd did not warn"; }
start_vhdnbd "$sock" --read-only img.vhd 2>served.log
stop_vhdnbd
grep -q "saved-state" served.log && { cat served.log >&2; fail "vhdnbd warned for a read-only export"; }
echo "ok: compact and resize refuse a saved-state image; vhdnbd warns"
