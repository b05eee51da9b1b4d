#!/bin/bash
# Xen blktap's batmap ("tdbatmap", after the BAT): tapdisk reads a block
# it marks full whole, without the block's sector bitmap.  vhdnbd never
# rewrites the batmap, so zeroing, trimming and compacting must keep every
# such block allocated and full: then tapdisk (tapdisk-view.py, written from
# blktap's rules) reads what vhdnbd serves and what the test expects, and
# vhd-util's own check (no mark on an unallocated block) still holds.  The
# batmap's bytes stay as they were, compaction never moves a block onto
# its zero sectors, and vhdimg check reports a batmap at odds with the
# bitmaps, and a block it marks full that was left unallocated is filled
# when a write allocates it; commit's emptied child keeps one.  (Resizing that would strand the batmap:
# test-vhdimg-foreign.sh.)
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires_py nbd
cd "$TMPD"
tv() { "$PY3" "$top_srcdir/tests/interop/tapdisk-view.py" "$@"; }
sock=$TMPD/sock
K=1024 M=$((1024 * 1024))

"$PY3" "$top_srcdir/tests/interop/make-foreign-vhd.py" fx || fail "make-foreign-vhd.py"
cp fx/tap-*.vhd .
for f in tap-dyn tap-t0 tap-t1 tap-t2; do
  tv invariant $f.vhd || fail "$f: the fixture's batmap is not as tapdisk keeps it"
  tv dump $f.vhd >$f.batmap
done
# info shows it: tap-t0 wrote blocks 0-15, 256, 257 and 767 whole.
"$VHDIMG" info --json tap-t0.vhd >info.json || fail "info tap-t0"
"$PY3" - info.json <<'PYEOF' || fail "info: the batmap is not shown as it is"
import json, sys
i = json.load(open(sys.argv[1]))
want = {"batmap-full-blocks": 19, "batmap-checksum-ok": True}
got = {k: i.get(k) for k in want}
if got != want or not i.get("batmap-offset"):
    sys.exit(f"info: {got}, offset {i.get('batmap-offset')}; expected {want}")
PYEOF

# expect OUT RAW [OFFSET LENGTH BYTE]...: RAW with each range set to BYTE.
expect() {
  "$PY3" - "$@" <<'PYEOF'
import sys
out, raw, args = sys.argv[1], sys.argv[2], sys.argv[3:]
data = bytearray(open(raw, "rb").read())
for i in range(0, len(args), 3):
    off, n, b = int(args[i]), int(args[i + 1]), int(args[i + 2])
    data[off:off + n] = bytes([b]) * n
open(out, "wb").write(data)
PYEOF
}

# same NAME EXPECTED FILES...: tapdisk's view of the chain FILES is
# EXPECTED, the batmap is as generated, and the invariant holds.
same() {
  local n=$1 want=$2
  shift 2
  tv read tapdisk.out "$@"
  cmp tapdisk.out "$want" || fail "$n: tapdisk reads other bytes than expected"
  tv invariant "$1" || fail "$n: the batmap no longer matches the blocks"
  tv dump "$1" | cmp -s - "${1%.vhd}.batmap" || fail "$n: the batmap's bytes changed"
}

# 1. A differencing image (4 KiB blocks, every written block marked full):
# a trim, then a sector written back into the block; write-zeroes on a
# marked block; a trim of another.
start_vhdnbd "$sock" tap-t2.vhd
"$PY3" - "$sock" <<'PYEOF' || fail "NBD requests on tap-t2"
import nbd, sys
K, M = 1024, 1 << 20
h = nbd.NBD()
h.connect_unix(sys.argv[1])
h.trim(4096, 20 * K)              # block 5, marked full
h.pwrite(b"\xa5" * 512, 20 * K)
h.zero(4096, 1 * M)               # block 256, marked full
h.trim(4096, 2 * M + 4096)        # block 513, marked full
h.flush()
open("served.out", "wb").write(h.pread(h.get_size(), 0))
h.shutdown()
PYEOF
stop_vhdnbd
expect want.raw fx/tap-t2.raw $((20 * K)) 512 165 $M 4096 0
cmp served.out want.raw || fail "tap-t2: vhdnbd served other bytes than expected"
same tap-t2 want.raw tap-t2.vhd tap-t1.vhd tap-t0.vhd
"$VHDIMG" check tap-t2.vhd >check.out || { cat check.out >&2; fail "tap-t2: check is not clean"; }

# 2. A dynamic image (2 MiB blocks, block 0 marked full): write-zeroes that
# may punch over the whole block, a trim inside it, a fast zero refused
# (zeros must be written), and a zero over the unmarked block 1.
start_vhdnbd "$sock" tap-dyn.vhd
"$PY3" - "$sock" <<'PYEOF' || fail "NBD requests on tap-dyn"
import errno, nbd, sys
K, M = 1024, 1 << 20
h = nbd.NBD()
h.connect_unix(sys.argv[1])
h.zero(2 * M, 0)
h.trim(4096, 1 * M)
if h.can_fast_zero():
    try:
        h.zero(4096, 8192, nbd.CMD_FLAG_FAST_ZERO)
        sys.exit("a fast zero of a block the batmap marks full succeeded")
    except nbd.Error as e:
        if e.errnum != errno.ENOTSUP:
            sys.exit(f"fast zero: {e}, not ENOTSUP")
h.zero(4096, 3 * M)
h.flush()
open("served.out", "wb").write(h.pread(h.get_size(), 0))
h.shutdown()
PYEOF
stop_vhdnbd
expect want.raw fx/tap-dyn.raw 0 $((2 * M)) 0 $((3 * M)) 4096 0
cmp served.out want.raw || fail "tap-dyn: vhdnbd served other bytes than expected"
same tap-dyn want.raw tap-dyn.vhd

# 3. Compaction keeps block 0 (all zeros now, but marked full).
out=$("$VHDIMG" compact --json tap-dyn.vhd) || fail "tap-dyn: compact"
kept=$("$PY3" -c 'import json, sys; print(json.loads(sys.argv[1])["blocks-kept-batmap"])' "$out")
[ "$kept" = 1 ] || fail "tap-dyn: compact did not keep block 0 for the batmap: $out"
same "tap-dyn compacted" want.raw tap-dyn.vhd
"$VHDIMG" check tap-dyn.vhd >check.out || { cat check.out >&2; fail "tap-dyn: check is not clean"; }

# 4. A batmap of 8 sectors, the last 7 all zeros (2 KiB blocks, bits only
# for the first ones), before blocks placed last first: compaction must
# not take those zero sectors for free space.
"$PY3" - "$top_srcdir/tests/interop/make-foreign-vhd.py" <<'PYEOF' || fail "making tap-wide"
import importlib.util, sys
spec = importlib.util.spec_from_file_location("mf", sys.argv[1])
mf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mf)
M = 1 << 20
img = mf.Image("tap-wide", "tap", "dynamic", 64 * M, bs=2048,
               writes=[(0, 2048), (4096, 2048), (8192, 4096), (32 * M, 1024)])
open("tap-wide.vhd", "wb").write(img.build())
open("tap-wide.raw", "wb").write(img.expected())
PYEOF
tv dump tap-wide.vhd >tap-wide.batmap
same "tap-wide" tap-wide.raw tap-wide.vhd
"$VHDIMG" compact tap-wide.vhd >/dev/null || fail "tap-wide: compact"
same "tap-wide compacted" tap-wide.raw tap-wide.vhd

# 5. A mark on an unallocated block (an older vhdnbd freed such blocks;
# vhd-util check calls it an error), in a differencing and a dynamic image:
# tapdisk reads the parent (or zeros) until the block is allocated, and the
# whole block from the image after.  A sector written there must leave the
# block full, with the parent's data (or zeros) around it.
cp fx/tap-t0.vhd fx/tap-t1.vhd fx/tap-t2.vhd .
tv setbit tap-t2.vhd 2   # t0 holds data there, t1 and t2 do not
tv setbit tap-t0.vhd 20  # nobody holds data there
tv dump tap-t2.vhd >tap-t2.batmap
tv dump tap-t0.vhd >tap-t0.batmap
for img in tap-t2 tap-t0; do
  start_vhdnbd "$sock" $img.vhd
  off=$([ $img = tap-t2 ] && echo 8192 || echo $((20 * 4096 + 1024)))
  "$PY3" - "$sock" $off <<'PYEOF' || fail "NBD requests on $img"
import nbd, sys
h = nbd.NBD()
h.connect_unix(sys.argv[1])
h.pwrite(b"\x3c" * 512, int(sys.argv[2]))
h.flush()
open("served.out", "wb").write(h.pread(h.get_size(), 0))
h.shutdown()
PYEOF
  stop_vhdnbd
  expect want.raw fx/$img.raw $off 512 60
  cmp served.out want.raw || fail "$img: vhdnbd served other bytes than expected"
  # (t2 first: the write into t0 changes what t2's chain reads)
  if [ $img = tap-t2 ]; then
    same "tap-t2, a marked block allocated" want.raw tap-t2.vhd tap-t1.vhd tap-t0.vhd
  else
    same "tap-t0, a marked block allocated" want.raw tap-t0.vhd
  fi
done

# 6. commit: the emptied child keeps a batmap right after its BAT (tapdisk
# refuses to open a child of its own without one), marking nothing, and
# the chain reads as before.
cp fx/tap-t0.vhd fx/tap-t1.vhd fx/tap-t2.vhd .
"$VHDIMG" commit tap-t2.vhd >/dev/null || fail "commit tap-t2"
tv invariant tap-t2.vhd || fail "commit: the emptied child has no valid batmap"
tv dump tap-t2.vhd | tail -1 | grep -q '^0*$' || fail "commit: the emptied child's batmap marks blocks"
tv invariant tap-t1.vhd || fail "commit: the parent's batmap no longer matches its blocks"
tv read tapdisk.out tap-t2.vhd tap-t1.vhd tap-t0.vhd
cmp tapdisk.out fx/tap-t2.raw || fail "commit: tapdisk reads the chain differently"

# 7. check: a mark on a partly written block, on an unallocated one, and a
# checksum that does not match.
cp fx/tap-dyn.vhd partial.vhd
tv setbit partial.vhd 1
"$VHDIMG" check partial.vhd >check.out 2>&1 && fail "check: a full mark on a partial block passed"
grep -q "marks block 1 full but its sector bitmap is not" check.out ||
  { cat check.out >&2; fail "check: the partial block's mark is not reported"; }
cp fx/tap-t0.vhd unalloc.vhd
tv setbit unalloc.vhd 20
"$VHDIMG" check unalloc.vhd >check.out 2>&1 && fail "check: a full mark on an unallocated block passed"
grep -q "marks unallocated block 20 full" check.out ||
  { cat check.out >&2; fail "check: the unallocated block's mark is not reported"; }
cp fx/tap-t0.vhd sum.vhd
tv setbit sum.vhd 20 --keep-checksum
"$VHDIMG" check sum.vhd >check.out 2>&1 && fail "check: a wrong batmap checksum passed"
grep -q "Xen batmap checksum" check.out ||
  { cat check.out >&2; fail "check: the wrong checksum is not reported"; }
"$VHDIMG" info sum.vhd | grep -q "blocks marked full, checksum wrong" || fail "info: the wrong checksum is not shown"

# 8. Version 1.1 batmaps were summed as signed chars (tap-t0's first map
# byte is 0xff: -1, not 255).
cp fx/tap-t0.vhd v11.vhd
"$PY3" - v11.vhd <<'PYEOF' || fail "making a version 1.1 batmap"
import struct, sys
p = sys.argv[1]
d = bytearray(open(p, "rb").read())
table, = struct.unpack_from(">Q", d, 512 + 16)
n, = struct.unpack_from(">I", d, 512 + 28)
h = table + (n * 4 + 511) // 512 * 512
off, secs = struct.unpack_from(">QI", d, h + 8)
signed = sum(b - 256 if b > 127 else b for b in d[off:off + 512])
struct.pack_into(">II", d, h + 20, 0x00010001, ~signed & 0xFFFFFFFF)
open(p, "wb").write(d)
PYEOF
"$VHDIMG" info v11.vhd | grep -q "19 blocks marked full, checksum ok" ||
  fail "info: a version 1.1 batmap's signed checksum is not taken as right"
tv invariant v11.vhd || fail "the version 1.1 batmap does not check as tapdisk checks it"

# 9. resize refuses a size the batmap's sectors do not cover (tapdisk sums
# a sector for each 8 GiB): a BAT with room for 16 GiB, a one-sector map.
"$PY3" - "$top_srcdir/tests/interop/make-foreign-vhd.py" <<'PYEOF' || fail "making tap-room"
import importlib.util, struct, sys
spec = importlib.util.spec_from_file_location("mf", sys.argv[1])
mf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mf)
class Roomy(mf.Image):
    def entries(self):
        return 8192
img = Roomy("tap-room", "tap", "dynamic", 4 << 20, writes=[(0, 2 << 20)])
d = bytearray(img.build())
h = 1536 + 8192 * 4
struct.pack_into(">I", d, h + 16, 1)  # the map: one sector of its two
open("tap-room.vhd", "wb").write(d)
PYEOF
tv invariant tap-room.vhd || fail "tap-room: the batmap is not as tapdisk keeps it"
cp tap-room.vhd before.vhd
expect_exit 1 "$VHDIMG" resize --exact tap-room.vhd 16G 2>err.out
grep -q "does not cover" err.out || { cat err.out >&2; fail "resize: the refusal does not say the batmap is short"; }
cmp -s tap-room.vhd before.vhd || fail "resize: a refused resize changed tap-room"
"$VHDIMG" resize tap-room.vhd 6G >/dev/null || fail "resize: a size the batmap covers was refused"
tv invariant tap-room.vhd || fail "tap-room: the batmap does not match after a resize it covers"
# 10. Growing an image whose last, partial block the batmap marks full
# (every bitmap bit set, past the end too, and bytes there): the block
# keeps its bits, and the new space reads as zeros to tapdisk and vhdnbd.
"$PY3" - "$top_srcdir/tests/interop/make-foreign-vhd.py" <<'PYEOF' || fail "making tap-tail"
import importlib.util, struct, sys
spec = importlib.util.spec_from_file_location("mf", sys.argv[1])
mf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mf)
M = 1 << 20
img = mf.Image("tap-tail", "tap", "dynamic", 3 * M, writes=[(2 * M, 1 * M)])
d = bytearray(img.build())
bat, = struct.unpack_from(">I", d, 1536 + 4)
d[bat * 512:bat * 512 + 512] = b"\xff" * 512           # block 1's bitmap
data = bat * 512 + 512 + 1 * M                          # past the 3 MiB end
d[data:data + 1 * M] = b"\x77" * M
open("tap-tail.vhd", "wb").write(d)
open("tap-tail.raw", "wb").write(img.expected())
PYEOF
tv setbit tap-tail.vhd 1
tv invariant tap-tail.vhd || fail "tap-tail: the batmap is not as tapdisk keeps it"
"$VHDIMG" resize --exact tap-tail.vhd 4M >/dev/null || fail "resize tap-tail"
tv invariant tap-tail.vhd || fail "tap-tail: growing cleared bits of a block the batmap marks full"
truncate -s 4M tap-tail.raw
tv read tapdisk.out tap-tail.vhd
cmp tapdisk.out tap-tail.raw || fail "tap-tail: tapdisk reads other bytes than zeros past the old end"
"$VHDIMG" compare -F raw tap-tail.vhd tap-tail.raw >/dev/null || fail "tap-tail: vhdimg reads other bytes past the old end"

echo "ok: tapdisk reads what vhdnbd serves after zero, trim and compact; check sees bad batmaps"
