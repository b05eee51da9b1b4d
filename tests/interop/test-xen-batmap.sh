#!/bin/bash
# Xen blktap's batmap ("tdbatmap", after the BAT): tapdisk reads a block
# it marks full whole, without the block's sector bitmap.  vhdnbd never
# rewrites the batmap, so zeroing, trimming and compacting must keep every
# such block allocated and full: then tapdisk (tapdisk-view.py, written from
# blktap's rules) reads what vhdnbd serves and what the test expects, and
# vhd-util's own check (no mark on an unallocated block) still holds.  The
# batmap's bytes stay as they were, compaction never moves a block onto
# its zero sectors, and vhdimg check reports a batmap at odds with the
# bitmaps.  (Resizing that would strand it: test-vhdimg-foreign.sh.)
. "$top_srcdir/tests/functions.sh"
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

# 5. check: a mark on a partly written block, on an unallocated one, and a
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
echo "ok: tapdisk reads what vhdnbd serves after zero, trim and compact; check sees bad batmaps"
