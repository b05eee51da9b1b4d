#!/bin/bash
# nbdinfo against vhdnbd: --list with several -e exports and descriptions,
# --size / --is / --can, and --map on a partly written dynamic image, matched
# sector for sector against what was written (VHD bitmaps are per sector).
. "$top_srcdir/tests/functions.sh"
requires nbdinfo
requires_py nbd
requires qemu-img

sock=$TMPD/sock
base="nbd+unix://"
q="?socket=$sock"
M=$((1024 * 1024))

qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$TMPD/d0.vhd" $((8 * M))
qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$TMPD/d1.vhd" $((4 * M))
qemu-img create -q -f vpc -o subformat=fixed,force_size=on "$TMPD/f2.vhd" $((2 * M))
start_vhdnbd "$sock" -e "alpha=$TMPD/d1.vhd,description=Alpha disk" -e "beta=$TMPD/f2.vhd,ro" \
  "$TMPD/d0.vhd"

# --- --list ----------------------------------------------------------------------
nbdinfo --list --json "$base/$q" > "$TMPD/list.json" || fail "nbdinfo --list"
"$PY3" - "$TMPD/list.json" <<'EOF' || fail "nbdinfo --list: $(cat "$TMPD/list.json")"
import json, sys
doc = json.load(open(sys.argv[1]))
ex = {e["export-name"]: e for e in doc["exports"]}
assert set(ex) == {"", "alpha", "beta"}, f"exports {sorted(ex)}"
assert ex["alpha"].get("description") == "Alpha disk", ex["alpha"]
assert ex[""]["export-size"] == 8 << 20 and ex["alpha"]["export-size"] == 4 << 20
assert ex["beta"]["export-size"] == 2 << 20
assert ex["beta"]["is_read_only"] is True and ex["alpha"]["is_read_only"] is False
for e in ex.values():
    assert "base:allocation" in e["contexts"], e
    assert e["can_multi_conn"] is True and e["can_flush"] is True, e
EOF
nbdinfo --list "$base/$q" | grep -q 'description: Alpha disk' || fail "nbdinfo --list text output"

# --- --size / --is / --can ------------------------------------------------------------
[ "$(nbdinfo --size "$base/alpha$q")" = $((4 * M)) ] || fail "nbdinfo --size alpha"
nbdinfo --is read-only "$base/beta$q" || fail "beta is not read-only"
rc=0; nbdinfo --is read-only "$base/alpha$q" || rc=$?
[ "$rc" -eq 2 ] || fail "alpha: --is read-only gave status $rc, expected 2 (false)"
nbdinfo --can write "$base/alpha$q" || fail "alpha: cannot write"
nbdinfo --can trim "$base/alpha$q" || fail "alpha: cannot trim"
nbdinfo --can zero "$base/$q" || fail "default export: cannot zero"
if nbdinfo --can connect "$base/no-such-export$q" 2>/dev/null; then
  fail "connected to an export that does not exist"
fi

# --- --map -------------------------------------------------------------------------------
"$PY3" -m nbd -u "$base/$q" -c - <<'EOF' || fail "nbdsh writes"
M = 1 << 20
h.pwrite(b"\x01" * 4096, 2 * M + 4096)
h.pwrite(b"\x02", 5 * M + 100)
h.pwrite(b"\x03" * 600, 6 * M + 1000)
h.flush()
EOF
nbdinfo --map --json "$base/$q" > "$TMPD/map.json" || fail "nbdinfo --map"
"$PY3" - "$TMPD/map.json" <<'EOF' || fail "nbdinfo --map: $(cat "$TMPD/map.json")"
import json, sys
M = 1 << 20
merged = []
for e in json.load(open(sys.argv[1])):
    if merged and merged[-1][2] == e["type"] and merged[-1][0] + merged[-1][1] == e["offset"]:
        merged[-1][1] += e["length"]
    else:
        merged.append([e["offset"], e["length"], e["type"]])
# Sectors written are data (0); everything else, allocated block or not, is
# unallocated in the sector bitmap and reads as zeros (3 = hole,zero).
expected = [
    [0, 2 * M + 4096, 3],
    [2 * M + 4096, 4096, 0],
    [2 * M + 8192, 3 * M - 8192, 3],
    [5 * M, 512, 0],
    [5 * M + 512, M, 3],
    [6 * M + 512, 1536, 0],
    [6 * M + 2048, 2 * M - 2048, 3],
]
assert merged == expected, f"map {merged}\nexpected {expected}"
EOF
nbdinfo --map "$base/beta$q" > "$TMPD/map-beta.txt" || fail "nbdinfo --map beta"
if grep -q hole "$TMPD/map-beta.txt"; then
  fail "a fixed image has holes: $(cat "$TMPD/map-beta.txt")"
fi

stop_vhdnbd
for img in d0 d1 f2; do
  "$VHDIMG" check "$TMPD/$img.vhd" || fail "$img.vhd is not clean"
done
"$PY3" - "$TMPD/expected.raw" <<'EOF'
import sys
M = 1 << 20
b = bytearray(8 * M)
b[2 * M + 4096:2 * M + 8192] = b"\x01" * 4096
b[5 * M + 100] = 2
b[6 * M + 1000:6 * M + 1600] = b"\x03" * 600
open(sys.argv[1], "wb").write(b)
EOF
qemu-img compare -f vpc -F raw "$TMPD/d0.vhd" "$TMPD/expected.raw" || fail "d0.vhd content"
echo PASS
