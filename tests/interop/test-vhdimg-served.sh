#!/bin/bash
# vhdimg on an image that vhdnbd is serving: info, map and convert work
# (they open without the lock) and see data a client wrote and flushed;
# check --repair and writers are refused by the lock instead of racing it.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires qemu-io
[ -x "$VHDNBD" ] || { echo "SKIP: $VHDNBD was not built" >&2; exit 77; }
requires_write_helper
cd "$TMPD"

"$VHDIMG" create served.vhd 16M
vsize=$(info_field served.vhd virtual-size)
start_vhdnbd "$TMPD/nbd.sock" served.vhd
uri="nbd+unix:///?socket=$TMPD/nbd.sock"

# qemu-io flushes before it disconnects.
qemu-io -f raw -c 'write -q -P 0xab 0 1M' -c 'write -q -P 0xcd 9M 64K' "$uri"
make_raw expected.raw $vsize 0 1M 0xab 9M 64K 0xcd

"$VHDIMG" info served.vhd >info.out || fail "info of a served image"
grep -q '^allocated blocks: 2 of' info.out || { cat info.out >&2; fail "info does not see the flushed blocks"; }
"$VHDIMG" map --json served.vhd | "$PY3" -c '
import json, sys
data = [(e["start"], e["length"]) for e in json.load(sys.stdin) if e["data"]]
assert data and data[0][0] == 0 and any(s <= 9 << 20 < s + l for s, l in data), data
' || fail "map of a served image"
"$VHDIMG" convert served.vhd served.raw || fail "convert of a served image"
cmp served.raw expected.raw || fail "convert of a served image: content differs"
"$VHDIMG" check served.vhd >check.out || { cat check.out >&2; fail "check (read-only) of a served image"; }

rc=0
"$VHDIMG" check --repair served.vhd >check.out 2>&1 || rc=$?
[ $rc -eq 2 ] || { cat check.out >&2; fail "check --repair of a served image: exit $rc, expected 2"; }
grep -qi lock check.out || { cat check.out >&2; fail "check --repair does not say the image is locked"; }
"$WRITE_HELPER" served.vhd 0 4K 0x01 2>err.out && fail "a second writer got the served image"
grep -qi lock err.out || { cat err.out >&2; fail "the second writer was not refused by the lock"; }
