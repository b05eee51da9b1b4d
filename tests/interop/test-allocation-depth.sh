#!/bin/bash
# The qemu:allocation-depth meta context on a 3-deep differencing chain made
# with vhdimg create -b, each level written at its own range:
#   - nbdinfo --map=qemu:allocation-depth gives, for every byte, the level
#     vhdimg map --json names (its depth + 1), 0 where no level holds data;
#   - qemu-img map through x-dirty-bitmap=qemu:allocation-depth (QEMU reads
#     the context's values as base:allocation bits) matches what it prints
#     for qemu-nbd --allocation-depth serving a qcow2 chain written alike;
#   - both contexts in one BLOCK_STATUS reply, LIST with the "qemu:"
#     namespace, and a fixed and a dynamic image alone (1 or 0).
. "$top_srcdir/tests/functions.sh"
requires nbdinfo
requires_py nbd

sock=$TMPD/sock
M=$((1024 * 1024))
SIZE=$((8 * M))

# write IMAGE OFFSET BYTE: 64 KiB of BYTE at OFFSET, through the server.
write() {
  start_vhdnbd "$sock" "$1"
  "$PY3" -c "import nbd
h = nbd.NBD()
h.connect_unix('$sock')
h.pwrite(bytes([$3]) * 65536, $2)
h.flush()
h.shutdown()" || fail "writing $1 at $2"
  stop_vhdnbd
}

"$VHDIMG" create -t dynamic --exact "$TMPD/base.vhd" $SIZE >/dev/null || fail "vhdimg create base"
write "$TMPD/base.vhd" 0 1
"$VHDIMG" create -b "$TMPD/base.vhd" "$TMPD/mid.vhd" >/dev/null || fail "vhdimg create mid"
write "$TMPD/mid.vhd" $((2 * M)) 2
write "$TMPD/mid.vhd" $((6 * M)) 2
"$VHDIMG" create -b "$TMPD/mid.vhd" "$TMPD/top.vhd" >/dev/null || fail "vhdimg create top"
write "$TMPD/top.vhd" $((4 * M)) 3
write "$TMPD/top.vhd" $((6 * M)) 3 # hides mid's data there

"$VHDIMG" map --json "$TMPD/top.vhd" > "$TMPD/vhdimg.json" || fail "vhdimg map --json"
qemu-img create -q -f vpc -o subformat=fixed,force_size=on "$TMPD/fixed.vhd" $((2 * M))
"$VHDIMG" create -t dynamic --exact "$TMPD/dyn.vhd" $((4 * M)) >/dev/null || fail "vhdimg create dyn"
write "$TMPD/dyn.vhd" $M 4

start_vhdnbd "$sock" "$TMPD/top.vhd" -e "fixed=$TMPD/fixed.vhd" -e "dyn=$TMPD/dyn.vhd"
uri="nbd+unix:///?socket=$sock"

# --- nbdinfo against vhdimg map ---------------------------------------------------
nbdinfo --map=qemu:allocation-depth --json "$uri" > "$TMPD/depth.json" \
  || fail "nbdinfo --map=qemu:allocation-depth"
"$PY3" - "$TMPD/depth.json" "$TMPD/vhdimg.json" <<'EOF' || fail "depths differ from vhdimg map"
import json, sys
M = 1 << 20
def runs(pairs):
    out = []
    for off, length, v in pairs:
        if out and out[-1][2] == v and out[-1][0] + out[-1][1] == off:
            out[-1][1] += length
        else:
            out.append([off, length, v])
    return out
got = runs((e["offset"], e["length"], e["type"]) for e in json.load(open(sys.argv[1])))
want = runs((e["start"], e["length"], e["depth"] + 1 if e["data"] else 0)
            for e in json.load(open(sys.argv[2])))
assert got == want, f"nbdinfo {got}\nvhdimg {want}"
# And what was written, so that a vhdimg map gone wrong the same way fails too.
K64 = 65536
assert got == [[0, K64, 3], [K64, 2 * M - K64, 0], [2 * M, K64, 2], [2 * M + K64, 2 * M - K64, 0],
               [4 * M, K64, 1], [4 * M + K64, 2 * M - K64, 0], [6 * M, K64, 1],
               [6 * M + K64, 2 * M - K64, 0]], got
EOF

# --- fixed and dynamic images alone -------------------------------------------------
fixed=$(nbdinfo --map=qemu:allocation-depth --totals "nbd+unix:///fixed?socket=$sock") \
  || fail "nbdinfo fixed"
[ "$(echo "$fixed" | awk '{print $1, $3}')" = "$((2 * M)) 1" ] \
  || fail "fixed image: depth totals '$fixed', expected all 1"
nbdinfo --map=qemu:allocation-depth "nbd+unix:///dyn?socket=$sock" > "$TMPD/dyn.txt" \
  || fail "nbdinfo dyn"
awk '{print $1, $2, $3}' "$TMPD/dyn.txt" > "$TMPD/dyn.got"
printf '%s\n' "0 $M 0" "$M 65536 1" "$((M + 65536)) $((3 * M - 65536)) 0" > "$TMPD/dyn.want"
cmp -s "$TMPD/dyn.got" "$TMPD/dyn.want" || fail "dynamic image depths: $(cat "$TMPD/dyn.txt")"

# --- both contexts at once, LIST by namespace -----------------------------------------
"$PY3" - "$sock" <<'EOF' || fail "libnbd: both contexts, or LIST qemu:"
import sys, nbd
M = 1 << 20
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_unix(sys.argv[1])
seen = []
h.add_meta_context("qemu:")
h.opt_list_meta_context(lambda name: seen.append(name))
assert seen == ["qemu:allocation-depth"], seen
h.clear_meta_contexts()
h.add_meta_context("base:allocation")
h.add_meta_context("qemu:allocation-depth")
h.opt_go()
assert h.can_meta_context("base:allocation") and h.can_meta_context("qemu:allocation-depth")
calls = []
h.block_status(8 * M, 0, lambda ctx, off, ents, err: calls.append((ctx, off, list(ents))))
ctxs = {c: e for c, off, e in calls}
assert sorted(ctxs) == ["base:allocation", "qemu:allocation-depth"], calls
assert ctxs["base:allocation"][:4] == [65536, 0, 2 * M - 65536, 3], ctxs
assert ctxs["qemu:allocation-depth"][:4] == [65536, 3, 2 * M - 65536, 0], ctxs
# REQ_ONE: one descriptor per context.
calls.clear()
h.block_status(2 * M, 2 * M, lambda ctx, off, ents, err: calls.append((ctx, list(ents))),
               nbd.CMD_FLAG_REQ_ONE)
assert sorted(calls) == [("base:allocation", [65536, 0]), ("qemu:allocation-depth", [65536, 2])], calls
h.shutdown()
EOF

# --- qemu-img map, against qemu-nbd on a qcow2 chain written alike ----------------------
if ! command -v qemu-img >/dev/null || ! command -v qemu-nbd >/dev/null \
   || ! command -v qemu-io >/dev/null; then
  echo "qemu-img, qemu-io or qemu-nbd missing: qemu-img map comparison skipped" >&2
  exit 0
fi
qmap() {
  qemu-img map --output=json --image-opts \
    "driver=nbd,path=$1,x-dirty-bitmap=qemu:allocation-depth"
}
qmap "$sock" > "$TMPD/ours.json" || fail "qemu-img map over vhdnbd"
stop_vhdnbd
qemu-img create -q -f qcow2 "$TMPD/b.qcow2" $SIZE
qemu-io -c "write -P 1 0 64k" "$TMPD/b.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b "$TMPD/b.qcow2" -F qcow2 "$TMPD/m.qcow2"
qemu-io -c "write -P 2 2M 64k" -c "write -P 2 6M 64k" "$TMPD/m.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b "$TMPD/m.qcow2" -F qcow2 "$TMPD/t.qcow2"
qemu-io -c "write -P 3 4M 64k" -c "write -P 3 6M 64k" "$TMPD/t.qcow2" >/dev/null
qemu-nbd -t -A -k "$TMPD/q.sock" -f qcow2 -r "$TMPD/t.qcow2" &
qpid=$!
cleanup_fn "kill $qpid 2>/dev/null; wait $qpid 2>/dev/null"
wait_for 60 "qemu-nbd listening" test -S "$TMPD/q.sock"
wait_for 60 "qemu-img map over qemu-nbd" eval 'qmap "$TMPD/q.sock" > "$TMPD/qemu.json"'
cmp -s "$TMPD/ours.json" "$TMPD/qemu.json" \
  || fail "qemu-img map differs: vhdnbd $(cat "$TMPD/ours.json") qemu-nbd $(cat "$TMPD/qemu.json")"
# The comparison means something only if the depths show: QEMU 7.2 prints a
# range of depth 1 as not present, of depth 2 or 3 as zero.
grep -q '"start": 4194304, "length": 65536, "depth": 0, "present": false' "$TMPD/ours.json" \
  || fail "qemu-img map: the top image's range does not show: $(cat "$TMPD/ours.json")"
exit 0
