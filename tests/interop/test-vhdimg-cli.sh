#!/bin/bash
# The vhdimg command line: usage errors, help, info --json, map against
# qemu-img map, convert round trips and sparseness, check exit codes.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires qemu-img
requires qemu-io
requires_write_helper
cd "$TMPD"

# usage_fails ARGS...: exit 2, a one-line "vhdimg..." message plus a hint, nothing on stdout.
usage_fails() {
  local rc=0
  "$VHDIMG" "$@" >out 2>err || rc=$?
  [ $rc -eq 2 ] || fail "vhdimg $*: exit $rc, expected 2"
  [ ! -s out ] || fail "vhdimg $*: a usage error printed on stdout"
  [ "$(wc -l <err)" -le 2 ] || { cat err >&2; fail "vhdimg $*: more than a line and a hint"; }
  grep -q '^vhdimg' err || { cat err >&2; fail "vhdimg $*: message does not start with vhdimg"; }
  grep -q -- '--help' err || { cat err >&2; fail "vhdimg $*: no usage hint"; }
}
"$VHDIMG" create ok.vhd 4M
usage_fails
usage_fails frobnicate
usage_fails --frobnicate
usage_fails help frobnicate
usage_fails create
usage_fails create x.vhd
usage_fails create x.vhd 10Q
usage_fails create x.vhd 0
usage_fails create -t weird x.vhd 1M
usage_fails create -t fixed -b ok.vhd x.vhd
usage_fails create -t differencing x.vhd
usage_fails create -b ok.vhd x.vhd 1M
usage_fails create --block-size 1X x.vhd 1M
usage_fails create --block-size 3000 x.vhd 1M
usage_fails create --block-size 512M x.vhd 1M
usage_fails create x.vhd 2041G
[ ! -e x.vhd ] || fail "a refused create left x.vhd behind"
usage_fails create --frob x.vhd 1M
usage_fails create x.vhd 1M extra
usage_fails create -t
usage_fails info
usage_fails info --frob ok.vhd
usage_fails info ok.vhd ok.vhd
usage_fails check
usage_fails check --frob ok.vhd
usage_fails map
usage_fails map ok.vhd extra
usage_fails convert ok.vhd
usage_fails convert -O qcow2 ok.vhd x.raw
usage_fails convert -O
[ ! -e x.vhd ] && [ ! -e x.raw ] || fail "a usage error created a file"

"$VHDIMG" --help | grep -q '^Usage: vhdimg' || fail "--help"
"$VHDIMG" -V | grep -Eq '^vhdimg [0-9]' || fail "-V"
"$VHDIMG" --version | grep -Eq '^vhdimg [0-9]' || fail "--version"
for cmd in create info check map convert compare; do
  "$VHDIMG" help $cmd | grep -q "^Usage: vhdimg $cmd" || fail "help $cmd"
  "$VHDIMG" $cmd --help | grep -q "^Usage: vhdimg $cmd" || fail "$cmd --help"
done

# Engine errors: "vhdimg: <message>", exit 1.
rc=0
"$VHDIMG" info missing.vhd 2>err || rc=$?
[ $rc -eq 1 ] || fail "info of a missing file: exit $rc"
grep -q '^vhdimg: .*missing.vhd' err || { cat err >&2; fail "info of a missing file: message"; }

# create: sizes, types, exact size, block size.
"$VHDIMG" create -t fixed f.vhd 10M
[ "$(info_field f.vhd virtual-size)" = "$(qemu_vsize f.vhd)" ] || fail "fixed: sizes differ from qemu"
"$VHDIMG" create --exact e.vhd 100M
[ "$(info_field e.vhd virtual-size)" = 104857600 ] || fail "--exact did not keep 100M"
[ "$(qemu_vsize e.vhd)" = 104857600 ] || fail "--exact: qemu sees $(qemu_vsize e.vhd) bytes"
# Converting keeps a size no CHS geometry expresses.
for fmt in dynamic fixed; do
  "$VHDIMG" convert -O $fmt e.vhd e-$fmt.vhd
  [ "$(qemu_vsize e-$fmt.vhd)" = 104857600 ] || fail "convert -O $fmt of an exact-size image"
done
"$VHDIMG" create --block-size 512K b.vhd 8M
[ "$(info_field b.vhd block-size)" = 524288 ] || fail "--block-size 512K not kept"

# info --json is valid JSON even with quotes, tabs and backslashes in names.
# (A parent name has no backslash: VHD parent locators are Windows paths.)
cp ok.vhd 'back\slash	tab.vhd'
"$VHDIMG" info --json 'back\slash	tab.vhd' |
  "$PY3" -c 'import json, sys; assert json.load(sys.stdin)["filename"] == "back\\slash\ttab.vhd"' ||
  fail "info --json does not escape a file name"
parent='odd "name" p.vhd'
"$VHDIMG" create "$parent" 4M
"$VHDIMG" create -b "$parent" 'child "c".vhd'
"$VHDIMG" info --json 'child "c".vhd' >info.json
"$PY3" - "$parent" <<'PYEOF' || fail "info --json of a differencing image"
import json, sys
info = json.load(open("info.json"))
assert info["type"] == "differencing", info
assert info["filename"] == 'child "c".vhd', info["filename"]
chain = info["parent-chain"]
assert len(chain) == 1 and chain[0]["filename"].endswith(sys.argv[1]), chain
assert chain[0]["uuid"] == info["parent-uuid"], (chain, info["parent-uuid"])
assert info["virtual-size"] == chain[0]["virtual-size"]
for k in ("uuid", "creator-app", "timestamp-utc", "chs-size", "current-size", "block-size",
          "bat-offset", "allocated-blocks", "geometry"):
    assert k in info, k
PYEOF
"$VHDIMG" info 'child "c".vhd' | grep -q '^parent chain:' || fail "info: no parent chain"

# A qemu-written dynamic image: some data, a zero-filled block, the last block.
qemu-img create -q -f vpc q.vhd 64M
vsize=$(qemu_vsize q.vhd)
qemu-io -f vpc -c 'write -q -P 0xab 0 1M' -c 'write -q -P 0xcd 5M 4k' \
  -c 'write -q -P 0 32M 2M' -c "write -q -P 0x11 $((vsize - 512)) 512" q.vhd

# map --json matches qemu-img map on every extent.
"$VHDIMG" map --json q.vhd >map.vhdimg.json
qemu-img map -f vpc --output=json q.vhd >map.qemu.json
"$PY3" - <<'PYEOF' || fail "map --json differs from qemu-img map"
import json
ours = json.load(open("map.vhdimg.json"))
theirs = json.load(open("map.qemu.json"))
keys = ("start", "length", "depth", "present", "zero", "data", "offset")
norm = lambda l: [{k: e.get(k) for k in keys} for e in l]
if norm(ours) != norm(theirs):
    print("vhdimg:", json.dumps(ours, indent=1))
    print("qemu:", json.dumps(theirs, indent=1))
    raise SystemExit(1)
PYEOF
# The human form lists the same data extents (File aside).
"$VHDIMG" map q.vhd | awk '{print $1, $2, $3}' >map.vhdimg.txt
qemu-img map -f vpc q.vhd | awk '{print $1, $2, $3}' >map.qemu.txt
diff map.qemu.txt map.vhdimg.txt || fail "map (human) differs from qemu-img map"

# map of a differencing chain: each extent at the level that holds it.
"$VHDIMG" create mb.vhd 8M
"$WRITE_HELPER" mb.vhd 0 1M 0xaa
"$VHDIMG" create -b mb.vhd mc.vhd
"$WRITE_HELPER" mc.vhd 4M 1M 0xbb  512K 4K 0xcc
"$VHDIMG" map --json mc.vhd >map.chain.json
"$PY3" - "$(info_field mc.vhd virtual-size)" <<'PYEOF' || fail "map --json of a differencing chain"
import json, sys
size = int(sys.argv[1])
K, M = 1024, 1024 * 1024
got = [(e["start"], e["length"], e["depth"], e["data"], e["zero"], "offset" in e)
       for e in json.load(open("map.chain.json"))]
want = [(0, 512 * K, 1, True, False, True), (512 * K, 4 * K, 0, True, False, True),
        (516 * K, 508 * K, 1, True, False, True), (1 * M, 3 * M, 1, False, True, False),
        (4 * M, 1 * M, 0, True, False, True), (5 * M, size - 5 * M, 1, False, True, False)]
if got != want:
    print("got: ", got, "\nwant:", want)
    raise SystemExit(1)
PYEOF
"$VHDIMG" map mc.vhd >map.chain.txt
[ "$(grep -c 'mb.vhd$' map.chain.txt)" = 2 ] && [ "$(grep -c 'mc.vhd$' map.chain.txt)" = 2 ] ||
  { cat map.chain.txt >&2; fail "map of a chain: File column"; }

# convert round trips; only data is written.
for fmt in raw fixed dynamic; do
  "$VHDIMG" convert -O $fmt q.vhd out.$fmt
  qfmt=$([ $fmt = raw ] && echo raw || echo vpc)
  qemu-img compare -q -f vpc -F $qfmt q.vhd out.$fmt || fail "convert -O $fmt: content differs"
  [ "$(qemu-img info -f $qfmt --output=json out.$fmt |
       "$PY3" -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" = "$vsize" ] ||
    fail "convert -O $fmt: virtual size changed"
done
# 1 MiB + 4 KiB + 512 bytes of data, the zero-filled 2 MiB is not written.
[ "$(stat -c %b out.raw)" -lt $((2 * 1024 * 2)) ] ||
  fail "convert -O raw is not sparse ($(stat -c %b out.raw) blocks allocated)"
# Source: blocks 0, 2, 16 (zeros) and 31; the zero-filled block is not copied.
[ "$(info_field out.dynamic allocated-blocks)" = 3 ] ||
  fail "convert -O dynamic: $(info_field out.dynamic allocated-blocks) blocks, expected 3"
"$VHDIMG" convert -O dynamic out.dynamic back.vhd
qemu-img compare -q -f vpc -F vpc q.vhd back.vhd || fail "dynamic -> dynamic round trip"
"$VHDIMG" convert -O raw out.fixed back.raw
cmp back.raw out.raw || fail "fixed -> raw round trip"
# Converting over an existing file replaces it.
"$VHDIMG" convert -O dynamic q.vhd out.dynamic
qemu-img compare -q -f vpc -F vpc q.vhd out.dynamic || fail "convert over an existing file"
# -p draws only on a terminal.
"$VHDIMG" convert -p q.vhd p.raw 2>err
[ ! -s err ] || fail "convert -p wrote to a stderr that is not a terminal"
rc=0
"$VHDIMG" convert q.vhd q.vhd 2>err || rc=$?
[ $rc -eq 1 ] || fail "convert onto its own source: exit $rc"
qemu-img compare -q -f vpc -F raw q.vhd out.raw || fail "convert onto itself damaged the source"

# check exit codes: clean 0, corrupt 1, cannot open 2.
expect_exit 0 "$VHDIMG" check q.vhd
expect_exit 2 "$VHDIMG" check missing.vhd
cp q.vhd corrupt.vhd
# BAT entry 0 (the BAT is at 1536 in QEMU images) pointing far beyond the end.
printf '\x00\xff\x00\x00' | dd of=corrupt.vhd bs=1 seek=1536 conv=notrunc status=none
expect_exit 1 "$VHDIMG" check corrupt.vhd
# Leaked space: an unreferenced block between the last block and the footer.
"$PY3" - <<'PYEOF'
data = open("q.vhd", "rb").read()
open("leak.vhd", "wb").write(data[:-512] + bytes(2 * 1024 * 1024 + 512) + data[-512:])
PYEOF
expect_exit 3 "$VHDIMG" check leak.vhd

# check --json: the same verdicts, as one object, with the same exit codes.
# json_check FILE EXIT PYTHON-ASSERTION [--repair]
json_check() {
  local file=$1 want=$2 assertion=$3 rc=0
  shift 3
  "$VHDIMG" check --json "$@" "$file" >check.json || rc=$?
  [ $rc = "$want" ] || fail "check --json $* $file: exit $rc, expected $want"
  "$PY3" -c "import json, sys; j = json.load(open('check.json')); assert $assertion, j" ||
    fail "check --json $* $file: $(cat check.json)"
}
json_check q.vhd 0 'j["result"] == "clean" and j["findings"] == [] and not (j["corrupt"] or j["leaks"] or j["repaired"])'
json_check corrupt.vhd 1 'j["result"] == "corrupt" and j["corrupt"] and any(f["level"] == "error" and "BAT" in f["message"] for f in j["findings"])'
json_check leak.vhd 3 'j["result"] == "leaks" and j["leaks"] and not j["corrupt"] and [f["level"] for f in j["findings"]] == ["leak"]'
cp leak.vhd 'leak "q"\.vhd'
json_check 'leak "q"\.vhd' 0 'j["filename"] == "leak \"q\"\\.vhd" and j["repaired"] and j["result"] == "clean" and j["after-repair"]["findings"] == [] and j["findings"][0]["level"] == "repaired"' --repair
expect_exit 3 "$VHDIMG" check leak.vhd
rc=0
"$VHDIMG" check --json missing.vhd >check.json 2>/dev/null || rc=$?
[ $rc = 2 ] && [ ! -s check.json ] || fail "check --json of a missing file: exit $rc, output '$(cat check.json)'"

"$VHDIMG" check --repair leak.vhd >repair.out || { cat repair.out >&2; fail "check --repair of a leak"; }
expect_exit 0 "$VHDIMG" check leak.vhd
qemu-img compare -q -f vpc -F vpc q.vhd leak.vhd || fail "repairing a leak changed the content"

# Leaked space between blocks: a block of 64 KiB unreferenced, its span
# written with zeros (a compaction cut short after zeroing it).  --repair
# punches it out where it is blank; bytes that are not blank stay.
"$VHDIMG" create -t dynamic --block-size 64K gap.vhd 1M >/dev/null
qemu-io -f vpc -c "write -P 0x61 0 64k" -c "write -P 0x62 64k 64k" -c "write -P 0x63 128k 64k" \
  gap.vhd >/dev/null || fail "qemu-io write into gap.vhd"
"$PY3" - gap.vhd 0 <<'PYEOF'
import struct, sys
path, fill = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(512 + 16)
    bat = struct.unpack(">Q", f.read(8))[0]
    f.seek(bat + 4)
    sector = struct.unpack(">I", f.read(4))[0]
    f.seek(bat + 4)
    f.write(b"\xff" * 4)
    f.seek(sector * 512)
    f.write(bytes([fill]) * (512 + 65536))
PYEOF
cp gap.vhd gap-data.vhd
"$PY3" -c 'import sys; f = open(sys.argv[1], "r+b"); f.seek(int(sys.argv[2])); f.write(b"x")' \
  gap-data.vhd $(( $(stat -c %s gap.vhd) - 512 - 2 * 66048 + 100 ))
expect_exit 3 "$VHDIMG" check gap.vhd
"$VHDIMG" check --repair gap.vhd >repair.out || { cat repair.out >&2; fail "check --repair of blank space between blocks"; }
grep -q "punched out 66048 unreferenced bytes between blocks" repair.out || { cat repair.out >&2; fail "check --repair: no punch reported"; }
expect_exit 0 "$VHDIMG" check gap.vhd
make_raw gap.raw 1M 0 64K 0x61 128K 64K 0x63
"$VHDIMG" compare -F raw gap.vhd gap.raw >/dev/null || fail "punching blank space between blocks changed the content"
expect_exit 3 "$VHDIMG" check --repair gap-data.vhd
expect_exit 3 "$VHDIMG" check gap-data.vhd

# Old footers of the image before the trailing footer: one with an older
# timestamp (a commit cut short while giving back the parent's window, then
# run again), one with another size (a resize).  They are the image's own:
# --repair cuts them.  A footer with another unique id is not: it stays.
"$VHDIMG" create -t dynamic stale.vhd 4M >/dev/null
qemu-io -f vpc -c "write -P 0x71 0 64k" stale.vhd >/dev/null || fail "qemu-io write into stale.vhd"
clean_size=$(stat -c %s stale.vhd)
cp stale.vhd stale-foreign.vhd
stale_tail() { # FILE UUID-BYTE-OR-KEEP
  "$PY3" - "$@" <<'PYEOF'
import struct, sys
path, uuid = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
footer = bytearray(data[-512:])
def variant(ts_delta, size_delta, uuid_byte):
    f = bytearray(footer)
    struct.pack_into(">I", f, 24, struct.unpack_from(">I", f, 24)[0] - ts_delta)
    struct.pack_into(">Q", f, 48, struct.unpack_from(">Q", f, 48)[0] + size_delta)
    if uuid_byte is not None:
        f[68] ^= uuid_byte
    struct.pack_into(">I", f, 64, 0)
    struct.pack_into(">I", f, 64, ~sum(f) & 0xffffffff)
    return bytes(f)
keep = None if uuid == "keep" else int(uuid, 0)
tail = variant(100, 0, keep) + bytes(65536) + variant(0, 1 << 20, keep) + bytes(3584)
with open(path, "wb") as o:
    o.write(data[:-512] + tail + bytes(footer))
PYEOF
}
stale_tail stale.vhd keep || fail "writing old footers into stale.vhd"
stale_tail stale-foreign.vhd 0x5a || fail "writing foreign footers into stale-foreign.vhd"
expect_exit 3 "$VHDIMG" check stale.vhd
"$VHDIMG" check --repair stale.vhd >repair.out || { cat repair.out >&2; fail "check --repair of old footers before the trailing footer"; }
[ "$(stat -c %s stale.vhd)" = "$clean_size" ] ||
  fail "check --repair left stale.vhd $(stat -c %s stale.vhd) bytes long, not $clean_size: $(cat repair.out)"
expect_exit 0 "$VHDIMG" check stale.vhd
size=$(stat -c %s stale-foreign.vhd)
expect_exit 3 "$VHDIMG" check --repair stale-foreign.vhd
[ "$(stat -c %s stale-foreign.vhd)" = "$size" ] || fail "check --repair cut another image's footers"
# A copy of a parent locator's data, off a sector, before the trailing
# footer (what a compaction or a rebase cut short leaves): nothing a reader
# sees, cut by --repair.
"$VHDIMG" create -t dynamic lc-base.vhd 4M >/dev/null
"$VHDIMG" create -b lc-base.vhd lc.vhd >/dev/null
lc_size=$(stat -c %s lc.vhd)
"$PY3" - lc.vhd <<'PYEOF' || fail "writing a locator copy into lc.vhd"
import struct, sys
path = sys.argv[1]
data = open(path, "rb").read()
hoff = struct.unpack(">Q", data[16:24])[0]
h = data[hoff:hoff + 1024]
code, space, length, _, off = struct.unpack(">4sIIIQ", h[576 + 24:576 + 48])
assert code == b"W2ku", code
copy = bytes(100) + data[off:off + length]
copy += bytes(-len(copy) % 512)
with open(path, "wb") as o:
    o.write(data[:-512] + copy + data[-512:])
PYEOF
"$VHDIMG" check --repair lc.vhd >repair.out || { cat repair.out >&2; fail "check --repair of a locator copy before the footer"; }
[ "$(stat -c %s lc.vhd)" = "$lc_size" ] ||
  fail "check --repair left lc.vhd $(stat -c %s lc.vhd) bytes long, not $lc_size: $(cat repair.out)"
"$VHDIMG" info lc.vhd >/dev/null || fail "lc.vhd does not find its parent after the repair"
# A window a crash left with small blocks: a block the crash caught before
# its BAT entry (its bitmap marks nothing, its data was written), then
# blocks handed out after it and never written (allocated zeros), then the
# rest of the window, a hole, and the footer: nothing a reader sees, cut by
# --repair, however many zero blocks follow.
"$VHDIMG" create -t dynamic --block-size 4K ow.vhd 1M >/dev/null
qemu-io -f vpc -c "write -P 0x41 0 8k" ow.vhd >/dev/null || fail "qemu-io write into ow.vhd"
ow_size=$(stat -c %s ow.vhd)
"$PY3" - ow.vhd <<'PYEOF' || fail "writing a crash window into ow.vhd"
import sys
path = sys.argv[1]
data = open(path, "rb").read()
with open(path, "wb") as o:
    o.write(data[:-512])
    o.write(bytes(512) + b"\x55" * 4096)  # bitmap marking nothing, data
    o.write(bytes(3 * 4608))              # three blocks never written
    o.seek(o.tell() + 65536)              # the rest of the window: a hole
    o.write(data[-512:])
PYEOF
"$VHDIMG" check --repair ow.vhd >repair.out || { cat repair.out >&2; fail "check --repair of a crash window with zero blocks"; }
[ "$(stat -c %s ow.vhd)" = "$ow_size" ] ||
  fail "check --repair left ow.vhd $(stat -c %s ow.vhd) bytes long, not $ow_size: $(cat repair.out)"
make_raw ow.raw 1M 0 8K 0x41
"$VHDIMG" compare -F raw ow.vhd ow.raw >/dev/null || fail "ow.vhd: content changed"
make_raw stale.raw 4M 0 64K 0x71
for f in stale.vhd stale-foreign.vhd; do
  "$VHDIMG" compare -F raw "$f" stale.raw >/dev/null || fail "$f: content changed"
done

# A parent in a subdirectory, child and parent then moved together: only the
# relative locator (W2ru, UTF-16LE) still leads to it (the absolute one names
# the old place, and the parent's name is not beside the child).
mkdir -p moved-from/sub
"$VHDIMG" create -t dynamic moved-from/sub/base.vhd 4M >/dev/null
qemu-io -f vpc -c "write -P 0x5a 1M 64k" moved-from/sub/base.vhd >/dev/null || fail "qemu-io write"
(cd moved-from && "$VHDIMG" create -b sub/base.vhd child.vhd >/dev/null) || fail "create -b sub/base.vhd"
mv moved-from moved-to
"$VHDIMG" info moved-to/child.vhd >info-moved.out || fail "the moved child's parent was not found: $(cat info-moved.out)"
grep -q "1: moved-to/sub/base.vhd" info-moved.out || fail "parent chain of the moved child: $(cat info-moved.out)"
"$VHDIMG" convert -O raw moved-to/child.vhd moved.raw || fail "convert of the moved child"
cmp <(dd if=moved.raw bs=64k skip=16 count=1 status=none) <(head -c 65536 /dev/zero | tr '\0' '\132') ||
  fail "the moved child does not read its parent's data"
