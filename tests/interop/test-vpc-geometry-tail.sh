#!/bin/bash
# Virtual PC disks ("vpc " and "vs  " creators) are served at their CHS
# geometry's size, as QEMU does, which may end before their current size;
# Hyper-V, VirtualBox and libvhdi read up to the current size, and the
# sectors between are data to them (FreeBSD's mkimg puts a backup GPT
# there).  vhdimg's commands that rewrite an image keep those sectors:
#  - resize grows a fixed and a dynamic disk with them kept (libvhdi reads
#    them as before, zeros after), and a size between the geometry's and
#    the current size is a shrink (refused without --shrink);
#  - commit carries a child's sectors there into its parent;
#  - compact does not free a child's block of zeros that hides its
#    parent's data there;
#  - a safe rebase onto a Virtual PC parent that holds the same data as
#    the old one past its geometry copies that data into the child, which
#    then reads it both at the current size (libvhdi) and at the size the
#    server serves its new parent at (vhdimg convert, whose reads are the
#    server's);
#  - commit refuses such a child, served past its parent's geometry: the
#    data it holds there would read as zeros once committed.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires_py pyvhdi
requires_write_helper
cd "$TMPD"
dump="$PY3 $top_srcdir/tests/interop/pyvhdi-dump.py"
CUR=4194304  # 8192 sectors: geometry 120/4/17, 4177920 bytes
CHS=4177920
TAIL=$((CUR - CHS))

# set_creator FILE: the footer (and its copy at 0 when valid) says "vpc ".
set_creator() {
  "$PY3" - "$1" <<'PYEOF'
import os, struct, sys
path = sys.argv[1]
def fix(f, off):
    f.seek(off)
    foot = bytearray(f.read(512))
    if foot[:8] != b"conectix":
        return
    foot[28:32] = b"vpc "
    foot[64:68] = b"\0\0\0\0"
    struct.pack_into(">I", foot, 64, ~sum(foot) & 0xFFFFFFFF)
    f.seek(off)
    f.write(foot)
with open(path, "r+b") as f:
    size = os.fstat(f.fileno()).st_size
    fix(f, size - 512)
    if size >= 1024:
        fix(f, 0)
PYEOF
}

# expect_bytes RAW OFF LEN BYTE WHAT: libvhdi's dump holds BYTE there.
expect_bytes() {
  "$PY3" - "$@" <<'PYEOF' || exit 1
import sys
raw, off, n, byte, what = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4], 0), sys.argv[5]
with open(raw, "rb") as f:
    f.seek(off)
    got = f.read(n)
got += bytes(n - len(got))  # the dump is sparse: a short read is zeros
bad = [i for i, b in enumerate(got) if b != byte]
if bad:
    print(f"FAIL: {what}: byte {off + bad[0]} reads {got[bad[0]]:#04x}, expected {byte:#04x}"
          f" ({len(bad)} of {n} differ)", file=sys.stderr)
    sys.exit(1)
PYEOF
}

media_size() { $dump "$1.raw" "${@:1}" | "$PY3" -c 'import json,sys; print(json.loads(sys.stdin.readline())["media-size"])'; }

# --- resize, fixed -----------------------------------------------------------
"$VHDIMG" create -t fixed --exact f.vhd $CUR >/dev/null
"$PY3" -c "
with open('f.vhd', 'r+b') as f:
    f.write(b'\x11' * 4096)
    f.seek($CHS)
    f.write(b'\xee' * $TAIL)
"
set_creator f.vhd
[ "$(media_size f.vhd)" = $CUR ] || fail "libvhdi does not see the fixed disk's current size"
expect_bytes f.vhd.raw $CHS $TAIL 0xee "fixed disk before resizing, past its geometry"
cp f.vhd g.vhd
"$VHDIMG" resize f.vhd 8M >/dev/null || fail "resize of the fixed disk failed"
$dump f.vhd.raw f.vhd >/dev/null
expect_bytes f.vhd.raw 0 4096 0x11 "grown fixed disk, its first sectors"
expect_bytes f.vhd.raw $CHS $TAIL 0xee "grown fixed disk, past its old geometry"
expect_bytes f.vhd.raw $CUR $((8388608 - CUR)) 0 "grown fixed disk, the new space"
sum=$(md5sum <g.vhd)
expect_exit 1 "$VHDIMG" resize --exact g.vhd $((CHS + 8192))
[ "$(md5sum <g.vhd)" = "$sum" ] || fail "a refused resize below the current size changed the disk"
echo "ok resize keeps a fixed Virtual PC disk's sectors past its geometry"

# --- resize, dynamic ---------------------------------------------------------
"$VHDIMG" create --exact d.vhd $CUR >/dev/null
"$WRITE_HELPER" d.vhd 0 4K 0x11 $CHS $TAIL 0xee
set_creator d.vhd
$dump d.vhd.raw d.vhd >/dev/null
expect_bytes d.vhd.raw $CHS $TAIL 0xee "dynamic disk before resizing, past its geometry"
"$VHDIMG" resize d.vhd 8M >/dev/null || fail "resize of the dynamic disk failed"
$dump d.vhd.raw d.vhd >/dev/null
expect_bytes d.vhd.raw $CHS $TAIL 0xee "grown dynamic disk, past its old geometry"
expect_bytes d.vhd.raw $CUR $((8388608 - CUR)) 0 "grown dynamic disk, the new space"
echo "ok resize keeps a dynamic Virtual PC disk's sectors past its geometry"

# --- commit --------------------------------------------------------------------
"$VHDIMG" create --exact b.vhd $CUR >/dev/null
"$WRITE_HELPER" b.vhd 0 $CUR 0x11
"$VHDIMG" create -b b.vhd c.vhd >/dev/null
"$WRITE_HELPER" c.vhd 0 64K 0x22 $CHS $TAIL 0x33
set_creator b.vhd
set_creator c.vhd
$dump c.raw c.vhd b.vhd >/dev/null
expect_bytes c.raw $CHS $TAIL 0x33 "the child before the commit, past its geometry"
"$VHDIMG" commit c.vhd >/dev/null || fail "commit failed"
$dump b.vhd.raw b.vhd >/dev/null
expect_bytes b.vhd.raw 0 65536 0x22 "the parent after the commit, the child's first sectors"
expect_bytes b.vhd.raw $CHS $TAIL 0x33 "the parent after the commit, past its geometry"
echo "ok commit carries a Virtual PC child's sectors past its geometry into the parent"

# --- compact -------------------------------------------------------------------
# The parent: zeros in its second 2 MiB block but past the geometry; the
# child: that whole block written as zeros, hiding the parent's data.
"$VHDIMG" create --exact p2.vhd $CUR >/dev/null
"$WRITE_HELPER" p2.vhd 0 64K 0x11 $CHS $TAIL 0x44
"$VHDIMG" create -b p2.vhd c2.vhd >/dev/null
"$WRITE_HELPER" c2.vhd 2M 2M 0x00
set_creator p2.vhd
set_creator c2.vhd
"$VHDIMG" compact c2.vhd >/dev/null || fail "compact failed"
$dump c2.raw c2.vhd p2.vhd >/dev/null
expect_bytes c2.raw $CHS $TAIL 0 "the compacted child, past its geometry (its zeros hide the parent's 0x44)"
echo "ok compact keeps a Virtual PC child's zeros that hide its parent's data past the geometry"

# --- rebase --------------------------------------------------------------------
"$VHDIMG" create --exact p3.vhd $CUR >/dev/null
"$WRITE_HELPER" p3.vhd 0 $CUR 0x55
"$VHDIMG" create -b p3.vhd c3.vhd >/dev/null
"$VHDIMG" convert -O dynamic --exact p3.vhd np3.vhd >/dev/null
set_creator np3.vhd
"$VHDIMG" rebase -b np3.vhd c3.vhd >/dev/null || fail "rebase failed"
$dump c3.raw c3.vhd np3.vhd >/dev/null
expect_bytes c3.raw $CHS $TAIL 0x55 "the rebased child at the current size, past the new parent's geometry"
"$VHDIMG" convert -O raw c3.vhd c3-served.raw
expect_bytes c3-served.raw $CHS $TAIL 0x55 "the rebased child as served, past the new parent's geometry"
echo "ok rebase onto a Virtual PC parent keeps what the child read past the parent's geometry"

# --- commit from a child served past its parent's geometry ---------------------
# c3's own creator keeps it served at its current size; np3 is served at its
# geometry.  What c3 holds past np3's geometry (the copies above) is what
# the server reads there: committed, it would read as zeros.
sum_c=$(md5sum <c3.vhd) sum_p=$(md5sum <np3.vhd)
expect_exit 1 "$VHDIMG" commit c3.vhd 2>err.out
grep -q "offset $CHS, past the $CHS bytes .*geometry" err.out ||
  { cat err.out >&2; fail "commit past the parent's geometry: the refusal names no offset"; }
[ "$(md5sum <c3.vhd)" = "$sum_c" ] && [ "$(md5sum <np3.vhd)" = "$sum_p" ] ||
  fail "a refused commit changed the child or its parent"
"$VHDIMG" convert -O raw c3.vhd c3-again.raw
cmp -s c3-served.raw c3-again.raw || fail "after the refused commit the child reads otherwise"
echo "ok commit refuses data a child holds past its Virtual PC parent's geometry"
