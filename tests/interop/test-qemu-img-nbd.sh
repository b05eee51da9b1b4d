#!/bin/bash
# QEMU's NBD client against vhdnbd: qemu-img info, convert (both ways, -n
# writing into the server), compare and map, on a dynamic image and on a
# differencing child whose parent must stay untouched.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires sha256sum

sock=$TMPD/sock
uri="nbd+unix:///?socket=$sock"
size=$((48 * 1024 * 1024))

# Source content: data in a few places, holes elsewhere, an unaligned tail.
mkraw() {
  truncate -s "$size" "$1"
  dd if=/dev/urandom of="$1" bs=1M seek=1 count=3 conv=notrunc status=none
  dd if=/dev/urandom of="$1" bs=1M seek=20 count=1 conv=notrunc status=none
  dd if=/dev/urandom of="$1" bs=1 seek=$((size - 777)) count=777 conv=notrunc status=none
}

# --- dynamic image ---------------------------------------------------------
qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$TMPD/dyn.vhd" "$size"
mkraw "$TMPD/src.raw"
start_vhdnbd "$sock" "$TMPD/dyn.vhd"

qemu-img info "$uri" > "$TMPD/info.txt" || fail "qemu-img info $uri"
grep -q "virtual size: .*($size bytes)" "$TMPD/info.txt" ||
  fail "qemu-img info: wrong size: $(cat "$TMPD/info.txt")"

qemu-img convert -n -f raw -O raw "$TMPD/src.raw" "$uri" || fail "qemu-img convert -n into the server"
qemu-img compare -f raw -F raw "$TMPD/src.raw" "$uri" || fail "qemu-img compare after writing"
qemu-img convert -f raw -O raw "$uri" "$TMPD/out.raw" || fail "qemu-img convert from the server"
cmp "$TMPD/src.raw" "$TMPD/out.raw" || fail "data read back differs"

# The map must report every written range as data (a false zero loses data).
qemu-img map -f raw --output=json "$uri" > "$TMPD/map.json" || fail "qemu-img map"
"$PY3" - "$TMPD/map.json" "$TMPD/src.raw" <<'EOF' || fail "qemu-img map disagrees with the content"
import json, sys
extents = json.load(open(sys.argv[1]))
data = open(sys.argv[2], "rb").read()
pos = 0
for e in extents:
    assert e["start"] == pos, f"map gap at {pos}: {e}"
    if e["zero"]:
        chunk = data[e["start"]:e["start"] + e["length"]]
        assert chunk.count(0) == len(chunk), f"extent {e} claims zeros over data"
    pos += e["length"]
assert pos == len(data), f"map covers {pos} of {len(data)} bytes"
EOF

stop_vhdnbd
"$VHDIMG" check "$TMPD/dyn.vhd" || fail "dyn.vhd is not clean"
qemu-img compare -f vpc -F raw "$TMPD/dyn.vhd" "$TMPD/src.raw" || fail "dyn.vhd content"

# --- a named export, read-only ------------------------------------------------
start_vhdnbd "$sock" -e "disk=$TMPD/dyn.vhd,ro"
qemu-img compare -f raw -F raw "$TMPD/src.raw" "nbd+unix:///disk?socket=$sock" ||
  fail "named export: content"
if qemu-img convert -n -f raw -O raw "$TMPD/src.raw" "nbd+unix:///disk?socket=$sock" 2>/dev/null; then
  fail "qemu-img wrote into a read-only export"
fi
stop_vhdnbd

# --- differencing child ---------------------------------------------------------
qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on "$TMPD/src.raw" "$TMPD/parent.vhd"
"$VHDIMG" create -t differencing -b "$TMPD/parent.vhd" "$TMPD/child.vhd" || fail "vhdimg create child"
parent_sum=$(sha256sum < "$TMPD/parent.vhd")
start_vhdnbd "$sock" "$TMPD/child.vhd"
qemu-img compare -f raw -F raw "$TMPD/src.raw" "$uri" || fail "child does not show its parent"
mkraw "$TMPD/src2.raw"
qemu-img convert -n -f raw -O raw "$TMPD/src2.raw" "$uri" || fail "qemu-img convert -n into the child"
qemu-img compare -f raw -F raw "$TMPD/src2.raw" "$uri" || fail "child content after writing"
stop_vhdnbd
"$VHDIMG" check "$TMPD/child.vhd" || fail "child.vhd is not clean"
"$VHDIMG" convert -O raw "$TMPD/child.vhd" "$TMPD/child.raw" || fail "vhdimg convert child"
cmp "$TMPD/src2.raw" "$TMPD/child.raw" || fail "child.vhd content"
[ "$(sha256sum < "$TMPD/parent.vhd")" = "$parent_sum" ] || fail "the parent changed"
echo PASS
