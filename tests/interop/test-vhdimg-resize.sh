#!/bin/bash
# vhdimg resize, read back by qemu-img (fixed, dynamic) and libvhdi (every
# type, chains of 3): fixed and dynamic images grown to odd sizes, with the
# CHS rule and --exact; dynamic BATs grown into their padding and over the
# blocks that follow them; differencing BATs moved past their parent
# locators; shrinks, refused while data lies past the new end (naming its
# offset) or without --shrink; reserved header bytes kept; BATs QEMU
# would refuse not made; a differencing image neither shrunk nor grown over
# its parent's data; differencing BATs that would grow over parent
# locator data (zeros before a block, or data in the BAT's padding) moved
# instead; an image being served is refused by its lock.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires qemu-img
requires_py pyvhdi
requires_write_helper
cd "$TMPD"
dump="$PY3 $top_srcdir/tests/interop/pyvhdi-dump.py"

# same_content EXPECTED IMAGE [PARENT...]: libvhdi (and qemu-img, for a
# fixed or dynamic IMAGE) read EXPECTED; vhdimg check finds nothing.
same_content() {
  local expected=$1 img=$2
  $dump "$img.pyvhdi" "${@:2}" >/dev/null || fail "$img: libvhdi cannot read it"
  cmp "$img.pyvhdi" "$expected" || fail "$img: libvhdi reads different bytes"
  if [ "$(info_field "$img" type)" != differencing ]; then
    [ "$(qemu_vsize "$img")" = "$(stat -c %s "$expected")" ] || fail "$img: qemu-img sees another size"
    qemu-img compare -q -f vpc -F raw "$img" "$expected" || fail "$img: qemu-img compare differs"
  fi
  "$VHDIMG" compare -F raw "$img" "$expected" >/dev/null || fail "$img: vhdimg compare differs"
  "$VHDIMG" check "$img" >/dev/null || fail "$img: vhdimg check"
  rm -f "$img.pyvhdi"
}

# resize_to IMAGE SIZE [OPTION...]: vhdimg resize, echoes the new size.
resize_to() {
  local img=$1 size=$2
  shift 2
  "$VHDIMG" resize "$@" "$img" "$size" >resize.out || { cat resize.out >&2; fail "resize $img $size $*"; }
  info_field "$img" virtual-size
}

# --- fixed: grown with the CHS rule, then exactly, then shrunk ---------------
"$VHDIMG" create -t fixed --exact f.vhd 1M
"$WRITE_HELPER" f.vhd 0 4K 0x11 1020K 4K 0x22
size=$(resize_to f.vhd 3000K)
[ "$size" -ge $((3000 * 1024)) ] || fail "fixed: grown to $size, less than asked"
[ "$(info_field f.vhd chs-size)" = "$size" ] || fail "fixed: CHS size is not the new size $size"
make_raw f.raw "$size" 0 4K 0x11 1020K 4K 0x22
same_content f.raw f.vhd
[ "$(stat -c %s f.vhd)" = $((size + 512)) ] || fail "fixed: file is not size + footer"
size=$(resize_to f.vhd $((5 * 1024 * 1024 + 1536)) --exact)
[ "$size" = $((5 * 1024 * 1024 + 1536)) ] || fail "fixed --exact: $size"
"$WRITE_HELPER" f.vhd $((size - 512)) 512 0x33
make_raw f.raw "$size" 0 4K 0x11 1020K 4K 0x22 $((size - 512)) 512 0x33
same_content f.raw f.vhd
expect_exit 1 "$VHDIMG" resize --exact f.vhd 2M 2>err.out
grep -q -- --shrink err.out || { cat err.out >&2; fail "a shrink without --shrink: no hint"; }
expect_exit 1 "$VHDIMG" resize --shrink --exact f.vhd 2M 2>err.out
grep -q "offset $((size - 512))" err.out || { cat err.out >&2; fail "fixed shrink: the first data past the end is not named"; }
"$WRITE_HELPER" f.vhd $((size - 512)) 512 0
size=$(resize_to f.vhd 1M --shrink --exact)
make_raw f.raw 1M 0 4K 0x11 1020K 4K 0x22
same_content f.raw f.vhd

# --- dynamic, 2 MiB blocks: the BAT grows into its padding --------------------
"$VHDIMG" create -t dynamic d.vhd 5M
"$WRITE_HELPER" d.vhd 0 1M 0xab 4M 512K 0xcd
bat=$(info_field d.vhd bat-offset)
size=$(resize_to d.vhd $((100 * 1024 * 1024 + 3 * 512)) --exact)
[ "$(info_field d.vhd bat-offset)" = "$bat" ] || fail "dynamic: the BAT moved although its padding had room"
"$WRITE_HELPER" d.vhd $((size - 1024)) 1K 0xef
make_raw d.raw "$size" 0 1M 0xab 4M 512K 0xcd $((size - 1024)) 1K 0xef
same_content d.raw d.vhd

# --- dynamic, 4 KiB blocks: the blocks after a full BAT sector move ------------
"$VHDIMG" create -t dynamic --block-size 4K --exact s.vhd 512K
"$WRITE_HELPER" s.vhd 0 12K 0x41 200K 4K 0x42 508K 4K 0x43
size=$(resize_to s.vhd $((3 * 1024 * 1024 - 512)) --exact)
[ "$(info_field s.vhd bat-offset)" = 1536 ] || fail "4K blocks: the BAT moved instead of the blocks"
"$WRITE_HELPER" s.vhd 2M 8K 0x44
make_raw s.raw "$size" 0 12K 0x41 200K 4K 0x42 508K 4K 0x43 2M 8K 0x44
same_content s.raw s.vhd
# and shrunk: refused past the data, then down to it.
expect_exit 1 "$VHDIMG" resize --shrink --exact s.vhd 1M 2>err.out
grep -q "offset $((2 * 1024 * 1024))" err.out || { cat err.out >&2; fail "dynamic shrink: the first data past the end is not named"; }
size=$(resize_to s.vhd $((2 * 1024 * 1024 + 8 * 1024)) --shrink --exact)
make_raw s.raw "$size" 0 12K 0x41 200K 4K 0x42 508K 4K 0x43 2M 8K 0x44
same_content s.raw s.vhd

# --- a chain of 3, each level resized: BATs move past the locators -------------
"$VHDIMG" create -t dynamic --block-size 4K --exact base.vhd 512K
"$WRITE_HELPER" base.vhd 0 64K 0x51 500K 12K 0x52
"$VHDIMG" create -b base.vhd mid.vhd
"$WRITE_HELPER" mid.vhd 16K 4K 0x61
"$VHDIMG" create -b mid.vhd top.vhd
"$WRITE_HELPER" top.vhd 32K 8K 0x71
top_bat=$(info_field top.vhd bat-offset)
for img in base mid top; do
  size=$(resize_to $img.vhd $((1024 * 1024 + 512)) --exact)
done
[ "$(info_field top.vhd bat-offset)" != "$top_bat" ] || fail "differencing: the BAT did not move past the locators"
"$WRITE_HELPER" mid.vhd 600K 4K 0x62
"$WRITE_HELPER" top.vhd $((size - 512)) 512 0x72
make_raw chain.raw "$size" 0 64K 0x51 500K 12K 0x52 16K 4K 0x61 32K 8K 0x71 600K 4K 0x62 \
  $((size - 512)) 512 0x72
same_content chain.raw top.vhd mid.vhd base.vhd

# --- reserved header bytes another writer left: kept, checksum still right ----
# Bytes 60-63 and 768-1023 of the dynamic header are reserved; a resize
# rebuilding the header dropped them, and its checksum then covered a second
# sector it never wrote: the image no longer opened.
"$VHDIMG" create -t dynamic --block-size 4K --exact rsv.vhd 512K
"$WRITE_HELPER" rsv.vhd 0 8K 0x81
"$PY3" - rsv.vhd <<'PYEOF'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(512)
    h = bytearray(f.read(1024))
    h[60:64] = b"\x01\x02\x03\x04"
    h[1000] = 0x5a
    h[36:40] = bytes(4)
    struct.pack_into(">I", h, 36, (~sum(h)) & 0xFFFFFFFF)
    f.seek(512)
    f.write(h)
PYEOF
"$VHDIMG" check rsv.vhd >/dev/null || fail "reserved header bytes: the planted image does not check clean"
size=$(resize_to rsv.vhd 3M --exact)
make_raw rsv.raw "$size" 0 8K 0x81
same_content rsv.raw rsv.vhd
"$PY3" - rsv.vhd <<'PYEOF' || fail "resize changed reserved bytes of the dynamic header"
import sys
with open(sys.argv[1], "rb") as f:
    f.seek(512)
    h = f.read(1024)
sys.exit(0 if h[60:64] == b"\x01\x02\x03\x04" and h[1000] == 0x5a else 1)
PYEOF

# --- a BAT QEMU would refuse, and few machines could hold, is not made ---------
"$VHDIMG" create -t dynamic --block-size 512 --exact tiny.vhd 64K 2>/dev/null
before=$(md5sum <tiny.vhd)
expect_exit 1 "$VHDIMG" resize --exact tiny.vhd 300G 2>err.out
grep -q "need a BAT of .* entries, more than the 536870911" err.out ||
  { cat err.out >&2; fail "a 300 GiB image of 512-byte blocks: the refusal does not say why"; }
[ "$(md5sum <tiny.vhd)" = "$before" ] || fail "a refused resize to an oversized BAT changed the image"
expect_exit 1 "$VHDIMG" create --block-size 2K huge.vhd 2040G 2>err.out
grep -q "use blocks of at least 4096 bytes" err.out ||
  { cat err.out >&2; fail "create with an oversized BAT: the refusal does not name the block size"; }
[ ! -e huge.vhd ] || fail "a refused create left a file"

# --- a differencing image resized where its parent holds data ----------------
# A shrink drops what the image reads past the new end, its parent's data
# too: refused, as for its own.  The space a grow adds reads through to the
# parent: over a parent that is larger and holds data there, it would read
# that data, not zeros.  Refused; growing over a parent with no data there
# (or a smaller one) reads zeros.
"$VHDIMG" create -t dynamic --block-size 4K --exact gp.vhd 2M
"$WRITE_HELPER" gp.vhd 0 4K 0x91
"$VHDIMG" create -b gp.vhd gc.vhd
"$VHDIMG" create -b gp.vhd gs.vhd
"$WRITE_HELPER" gc.vhd 4K 4K 0x93
resize_to gc.vhd 1M --shrink --exact >/dev/null
"$WRITE_HELPER" gp.vhd 1536K 8K 0x92
before=$(md5sum <gs.vhd)
expect_exit 1 "$VHDIMG" resize --shrink --exact gs.vhd 1M 2>err.out
grep -q "reads data from its parent .*gp.vhd at offset $((1536 * 1024)), past the new end" err.out ||
  { cat err.out >&2; fail "differencing shrink over parent data: the refusal does not name the offset"; }
[ "$(md5sum <gs.vhd)" = "$before" ] || fail "a refused differencing shrink changed the child"
before=$(md5sum <gc.vhd)
expect_exit 1 "$VHDIMG" resize --exact gc.vhd 2M 2>err.out
grep -q "holds data at offset $((1536 * 1024)), past the child's end" err.out ||
  { cat err.out >&2; fail "differencing grow over parent data: the refusal does not name the offset"; }
[ "$(md5sum <gc.vhd)" = "$before" ] || fail "a refused differencing grow changed the child"
size=$(resize_to gc.vhd 1536K --exact)
make_raw gc.raw "$size" 0 4K 0x91 4K 4K 0x93
"$VHDIMG" compare -F raw gc.vhd gc.raw >/dev/null || fail "differencing grow up to the parent's data: not zeros"
"$WRITE_HELPER" gp.vhd 1536K 8K 0
size=$(resize_to gc.vhd 2M --exact)
make_raw gc.raw "$size" 0 4K 0x91 4K 4K 0x93
"$VHDIMG" compare -F raw gc.vhd gc.raw >/dev/null || fail "differencing grow over a parent of zeros: not zeros"

# --- parent locator data beside the BAT ---------------------------------------
# Children laid out by hand, 4 KiB blocks, 16 BAT entries at 0x600 (one
# sector), block 0 of 0x5a.  lz: a W2ru locator whose data is zeros at
# 0x800 (its 512 bytes are the gap before block 0 at 0xa00: blank, but the
# locator's); lp: the W2ru data starting at 0x700, in the BAT's padding;
# lq: the same data reserving only its own length, so that it ends in the
# padding too.  Growing the BAT over any of them left a child that no
# longer opened.
"$VHDIMG" create -t dynamic --exact --block-size 4K lpar.vhd 64K >/dev/null
for name in lz lp lq; do
  "$VHDIMG" create -b lpar.vhd --block-size 4K $name.vhd >/dev/null
  "$PY3" - $name.vhd $name <<'PY' || fail "$name: building the child"
import struct, sys
path, kind = sys.argv[1], sys.argv[2]
def csum(b, off):
    return struct.pack(">I", ~(sum(b) - sum(b[off:off + 4])) & 0xFFFFFFFF)
old = open(path, "rb").read()
footer, header = bytearray(old[-512:]), bytearray(old[512:1536])
rel = "./lpar.vhd".encode("utf-16-le")
loc, block = (0x800, 0xA00) if kind == "lz" else (0x700, 0xA00)
space = len(rel) if kind == "lq" else 512
header[16:24] = struct.pack(">Q", 0x600)        # table offset
header[28:32] = struct.pack(">I", 16)           # max table entries
header[576:768] = bytes(192)                    # no locators but ours
length = 24 if kind == "lz" else len(rel)
header[576:600] = struct.pack(">IIIIQ", 0x57327275, space, length, 0, loc)
header[36:40] = csum(header, 36)
img = bytearray(block + 512 + 4096)
img[512:1536] = header
img[0x600:0x640] = struct.pack(">I", block // 512) + b"\xff" * 60
if kind != "lz":
    img[loc:loc + len(rel)] = rel
img[block] = 0xFF                               # bitmap: 8 sectors present
img[block + 512:block + 512 + 4096] = b"\x5a" * 4096
footer[64:68] = csum(footer, 64)
img[0:512] = footer
open(path, "wb").write(img + footer)
PY
  "$VHDIMG" check $name.vhd >/dev/null || fail "$name: the child made by hand does not check clean"
done
# lz and lq grow past the BAT's sector; lp to exactly 128 entries, its padding.
for case in lz:1M lp:512K lq:1M; do
  name=${case%%:*} size=${case#*:}
  "$VHDIMG" resize --exact $name.vhd $size >/dev/null || fail "$name: resize to $size"
  # Past the parent's 64 KiB the child reads zeros; check warns of that.
  "$VHDIMG" check $name.vhd >check.out 2>&1 || [ $? = 3 ] ||
    { cat check.out >&2; fail "$name: resized to $size, the child no longer checks"; }
  { printf '\x5a%.0s' $(seq 4096); } >$name.exp
  truncate -s "$(info_field $name.vhd virtual-size)" $name.exp
  "$VHDIMG" compare -F raw $name.vhd $name.exp >/dev/null || fail "$name: resized, it reads wrong"
done
[ "$(info_field lp.vhd bat-offset)" != 1536 ] || fail "lp: the BAT grew over locator data in its padding"
[ "$(info_field lq.vhd bat-offset)" != 1536 ] || fail "lq: the BAT grew over locator data in its padding"

# --- arguments, and an image in use -------------------------------------------
expect_exit 2 "$VHDIMG" resize d.vhd 2>/dev/null
expect_exit 2 "$VHDIMG" resize d.vhd 0 2>/dev/null
expect_exit 2 "$VHDIMG" resize d.vhd 1Q 2>/dev/null
if [ -x "$VHDNBD" ]; then
  before=$(md5sum <d.vhd)
  start_vhdnbd "$TMPD/nbd.sock" d.vhd
  expect_exit 1 "$VHDIMG" resize d.vhd 200M 2>err.out
  grep -qi lock err.out || { cat err.out >&2; fail "resize of a served image: not refused by the lock"; }
  stop_vhdnbd
  [ "$(md5sum <d.vhd)" = "$before" ] || fail "a refused resize changed the image"
fi
echo "ok"
