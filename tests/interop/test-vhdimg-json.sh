#!/bin/bash
# --json of the commands that report: convert, resize, compact, commit and
# rebase, each on inputs whose figures the test knows.  The output must be
# one JSON object with the documented keys and those values.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires_write_helper
cd "$TMPD"

# expect_json WHAT JSON KEY=VALUE...: JSON is one object, KEY holds VALUE
# (compared as JSON text: 12, true, null, "raw").
expect_json() {
  local what=$1 json=$2
  shift 2
  "$PY3" - "$json" "$@" <<'PYEOF' || fail "$what: $json"
import json, sys
try:
    obj = json.loads(sys.argv[1])
except ValueError as e:
    sys.exit(f"not JSON: {e}")
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    if k not in obj:
        sys.exit(f"no key {k}")
    if obj[k] != json.loads(v):
        sys.exit(f"{k} is {json.dumps(obj[k])}, expected {v}")
PYEOF
}

# 1 MiB with data in three 4 KiB pieces (one a 1536-byte write), in the
# 64 KiB blocks 0, 4 and 15, and 8 KiB of zeros written out (data to
# SEEK_DATA, skipped as zeros).
make_raw src.raw 1M 0 4K 0x11 4K 8K 0x00 300K 1536 0x22 1020K 4K 0x33

out=$("$VHDIMG" convert --json -f raw -O dynamic --exact --block-size 64K src.raw d.vhd) ||
  fail "convert -O dynamic"
expect_json "convert -O dynamic" "$out" source='"src.raw"' destination='"d.vhd"' \
  format='"dynamic"' virtual-size=1048576 bytes-written=12288 block-size=65536 allocated-blocks=3
out=$("$VHDIMG" convert --json d.vhd d.raw) || fail "convert -O raw"
expect_json "convert -O raw" "$out" format='"raw"' virtual-size=1048576 bytes-written=12288 \
  block-size=null allocated-blocks=null
out=$("$VHDIMG" convert --json -O fixed d.vhd f.vhd) || fail "convert -O fixed"
expect_json "convert -O fixed" "$out" format='"fixed"' bytes-written=12288 allocated-blocks=null
# A failed conversion prints no JSON.
out=$("$VHDIMG" convert --json missing.vhd x.raw 2>/dev/null) && fail "convert of a missing file"
[ -z "$out" ] || fail "a failed convert printed: $out"

# resize: 4 KiB blocks, 1 MiB: the BAT fills its 2 sectors, and growing to
# 2 MiB takes 2 more, over the one block written first (right after it).
"$VHDIMG" create --exact --block-size 4K r.vhd 1M
"$WRITE_HELPER" r.vhd 8K 4K 0x44 512K 4K 0x45
out=$("$VHDIMG" resize --json --exact r.vhd 2M) || fail "resize grow"
expect_json "resize grow" "$out" file='"r.vhd"' old-size=1048576 new-size=2097152 \
  blocks-moved=1 bat-moved=false
out=$("$VHDIMG" resize --json --exact --shrink r.vhd 1M) || fail "resize shrink"
expect_json "resize shrink" "$out" old-size=2097152 new-size=1048576 blocks-moved=0
"$VHDIMG" resize --exact r.vhd 1M | grep -qx "r.vhd: virtual size 1048576 bytes" ||
  fail "resize without --json changed its output"

# compact: one block of data, one of zeros (64 KiB blocks, which go back to
# back: only blocks of 512 KiB or more are placed 4 KiB-aligned).
"$VHDIMG" create --exact --block-size 64K z.vhd 1M
"$WRITE_HELPER" z.vhd 0 4K 0x55 64K 64K 0x00
before=$(stat -c %s z.vhd)
out=$("$VHDIMG" compact --json --dry-run z.vhd) || fail "compact --dry-run"
expect_json "compact --dry-run" "$out" file='"z.vhd"' dry-run=true file-size-before=$before \
  blocks-freed=1 bytes-reclaimed=$((512 + 65536))
[ "$(stat -c %s z.vhd)" = "$before" ] || fail "compact --dry-run changed the file"
out=$("$VHDIMG" compact --json z.vhd) || fail "compact"
expect_json "compact" "$out" dry-run=false blocks-freed=1 bytes-reclaimed=$((512 + 65536)) \
  file-size-after=$(stat -c %s z.vhd)

# commit and rebase: base holds 64 KiB of 0x11 at 0, top 8 KiB at 0 and
# 4 KiB at 1 MiB; other.vhd is empty.
mkchain() {
  rm -f base.vhd top.vhd other.vhd
  "$VHDIMG" create --exact --block-size 64K base.vhd 2M
  "$WRITE_HELPER" base.vhd 0 64K 0x11
  "$VHDIMG" create -b base.vhd top.vhd
  "$WRITE_HELPER" top.vhd 0 8K 0x22 1M 4K 0x23
  "$VHDIMG" create --exact --block-size 64K other.vhd 2M
}
mkchain
out=$("$VHDIMG" commit --json top.vhd) || fail "commit"
expect_json "commit" "$out" child='"top.vhd"' bytes=12288 sectors=24 removed=false
mkchain
out=$("$VHDIMG" commit --json --remove top.vhd) || fail "commit --remove"
expect_json "commit --remove" "$out" bytes=12288 sectors=24 removed=true
[ ! -e top.vhd ] || fail "commit --remove left top.vhd"
# Safe: where top holds nothing, base and other differ over 56 KiB.
mkchain
out=$("$VHDIMG" rebase --json -b other.vhd top.vhd) || fail "rebase"
expect_json "rebase" "$out" child='"top.vhd"' parent='"other.vhd"' bytes=57344 sectors=112 \
  mode='"safe"' unsafe=false
out=$("$VHDIMG" rebase --json -u -b base.vhd top.vhd) || fail "rebase -u"
expect_json "rebase -u" "$out" parent='"base.vhd"' bytes=0 sectors=0 mode='"unsafe"' unsafe=true
