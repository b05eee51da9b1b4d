#!/bin/bash
# A fixed disk of Virtual PC before 2004 ends with a 511-byte footer (the
# last reserved byte left out).  QEMU reads such a disk; so must vhdimg and
# vhdnbd:
#   info opens it; check says so (exit 3) and --repair writes the footer
#   whole (the file gains the byte; QEMU reads the same data);
#   vhdnbd serves its data and takes writes, which QEMU reads back, the
#   footer untouched;
#   commit of a differencing child into it writes the footer's new timestamp
#   where the footer starts, not over the disk's last byte.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires qemu-io
requires nbdcopy
helper=$top_builddir/vhd-write-helper
size=$((4 << 20))

# A fixed image by QEMU, data at both ends, then its last byte cut.
make_short() { # FILE
  qemu-img create -q -f vpc -o subformat=fixed,force_size=on "$1" 4M || fail "qemu-img create"
  qemu-io -f vpc -c 'write -P 0x5a 0 64k' -c "write -P 0x77 $((size - 4096)) 4096" "$1" \
    >/dev/null || fail "qemu-io write"
  truncate -s -1 "$1"
  [ "$(stat -c %s "$1")" -eq $((size + 511)) ] || fail "$1 is not $((size + 511)) bytes"
  [ "$(head -c $((size + 8)) "$1" | tail -c 8)" = conectix ] || fail "$1: no footer at $size"
}
qemu_reads() { # FILE OFFSET LENGTH BYTE
  qemu-io -f vpc -c "read -P $4 $2 $3" "$1" | grep -q "^read $3/$3 bytes" ||
    fail "$1: QEMU does not read $4 at $2+$3"
}

img=$TMPD/short.vhd
make_short "$img"
qemu_reads "$img" 0 65536 0x5a

"$VHDIMG" info "$img" >"$TMPD/info" 2>&1 || fail "vhdimg info refuses it: $(cat "$TMPD/info")"
grep -q "^type: fixed" "$TMPD/info" || fail "vhdimg info: $(cat "$TMPD/info")"
grep -q "^current size: $size bytes" "$TMPD/info" || fail "vhdimg info: $(cat "$TMPD/info")"

rc=0
"$VHDIMG" check "$img" >"$TMPD/check" 2>&1 || rc=$?
[ "$rc" -eq 3 ] || fail "vhdimg check exited $rc, not 3: $(cat "$TMPD/check")"
grep -q "511-byte footer" "$TMPD/check" || fail "vhdimg check does not say why: $(cat "$TMPD/check")"

# Served: the data reads as QEMU reads it, writes land, the footer stays.
footer_before=$(tail -c 511 "$img" | sha256sum)
start_vhdnbd "$TMPD/s" "$img"
nbdcopy "nbd+unix:///?socket=$TMPD/s" "$TMPD/read.raw" || fail "nbdcopy from vhdnbd"
[ "$(stat -c %s "$TMPD/read.raw")" -eq "$size" ] || fail "served size $(stat -c %s "$TMPD/read.raw")"
cmp -n 65536 "$TMPD/read.raw" <(head -c 65536 /dev/zero | tr '\0' '\132') ||
  fail "served data differs from QEMU's at 0"
cmp -i $((size - 4096)):0 -n 4096 "$TMPD/read.raw" <(head -c 4096 /dev/zero | tr '\0' '\167') ||
  fail "served data differs from QEMU's at the end"
head -c 8192 /dev/zero | tr '\0' '\063' >"$TMPD/w.raw"
nbdcopy "$TMPD/w.raw" "nbd+unix:///?socket=$TMPD/s" || fail "nbdcopy to vhdnbd"
stop_vhdnbd
qemu_reads "$img" 0 8192 0x33
qemu_reads "$img" 8192 $((65536 - 8192)) 0x5a
qemu_reads "$img" $((size - 4096)) 4096 0x77
[ "$(tail -c 511 "$img" | sha256sum)" = "$footer_before" ] || fail "serving changed the footer"
[ "$(stat -c %s "$img")" -eq $((size + 511)) ] || fail "serving changed the file's size"

# check --repair writes the footer whole.
"$VHDIMG" check --repair "$img" >"$TMPD/repair" 2>&1 || fail "check --repair: $(cat "$TMPD/repair")"
[ "$(stat -c %s "$img")" -eq $((size + 512)) ] || fail "after --repair: $(stat -c %s "$img") bytes"
"$VHDIMG" check "$img" >"$TMPD/check" 2>&1 || fail "check after --repair: $(cat "$TMPD/check")"
qemu_reads "$img" 0 8192 0x33
qemu_reads "$img" $((size - 4096)) 4096 0x77

# A repair takes away its own warning only: another one (the footer's
# reserved feature bit missing) still makes check exit 3.
odd=$TMPD/odd.vhd
make_short "$odd"
"$PY3" - "$odd" $size <<'PY' || fail "clearing the feature bits"
import struct, sys
path, at = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(at)
    foot = bytearray(f.read(511)) + b"\0"
    foot[8:12] = b"\0\0\0\0"
    foot[64:68] = b"\0\0\0\0"
    foot[64:68] = struct.pack(">I", ~sum(foot) & 0xffffffff)
    f.seek(at)
    f.write(foot[:511])
PY
rc=0
"$VHDIMG" check --repair --json "$odd" >"$TMPD/repair" 2>&1 || rc=$?
[ "$rc" -eq 3 ] || fail "check --repair with a second warning exited $rc, not 3: $(cat "$TMPD/repair")"
"$PY3" - "$TMPD/repair" <<'PY' || fail "check --repair --json: $(cat "$TMPD/repair")"
import json, sys
j = json.load(open(sys.argv[1]))
levels = [(f["level"], f["message"]) for f in j["findings"]]
assert any(l == "repaired" and "511-byte footer" in m for l, m in levels), levels
assert j["warnings"] is True, "the repair of the footer took the other warning away"
assert j["after-repair"]["warnings"] is True, j["after-repair"]
assert j["result"] == "warnings", j["result"]
PY
[ "$(stat -c %s "$odd")" -eq $((size + 512)) ] || fail "after --repair: $(stat -c %s "$odd") bytes"

# commit into a short-footer parent: its timestamp is written where the
# footer starts.
parent=$TMPD/parent.vhd
make_short "$parent"
"$VHDIMG" create -t differencing -b "$parent" "$TMPD/child.vhd" >/dev/null ||
  fail "vhdimg create -b on a short-footer parent"
"$helper" "$TMPD/child.vhd" 1M 64K 0x44 || fail "writing the child"
"$VHDIMG" commit "$TMPD/child.vhd" >"$TMPD/commit" 2>&1 || fail "commit: $(cat "$TMPD/commit")"
qemu_reads "$parent" 1048576 65536 0x44
qemu_reads "$parent" 0 65536 0x5a
qemu_reads "$parent" $((size - 4096)) 4096 0x77
[ "$(stat -c %s "$parent")" -eq $((size + 512)) ] ||
  fail "parent after commit: $(stat -c %s "$parent") bytes, not $((size + 512))"
"$VHDIMG" check "$parent" >"$TMPD/check" 2>&1 || fail "parent after commit: $(cat "$TMPD/check")"
echo "PASS: a 511-byte-footer fixed disk is read, served, written, repaired and committed into"
