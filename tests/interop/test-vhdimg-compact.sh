#!/bin/bash
# vhdimg compact: images with blocks of zeros (written by vhdimg's engine
# and by QEMU) get shorter, --dry-run predicts it without writing, --json
# reports it, a compaction cut short at any operation is finished by a rerun, and qemu-img (dynamic) and libvhdi (every type, a chain of 3
# whose zeros over parent data must stay) read the same disk before and
# after; parent locator data past the blocks moves down after them; a
# fixed image and an image being served are refused.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires qemu-img
requires qemu-io
requires_py pyvhdi
requires_write_helper
cd "$TMPD"
dump="$PY3 $top_srcdir/tests/interop/pyvhdi-dump.py"

# reads_as EXPECTED IMAGE [PARENT...]: libvhdi (and qemu-img for a dynamic
# IMAGE) read EXPECTED; vhdimg check finds nothing.
reads_as() {
  local expected=$1 img=$2
  $dump "$img.pyvhdi" "${@:2}" >/dev/null || fail "$img: libvhdi cannot read it"
  cmp "$img.pyvhdi" "$expected" || fail "$img: libvhdi reads different bytes"
  if [ "$(info_field "$img" type)" != differencing ]; then
    qemu-img compare -q -f vpc -F raw "$img" "$expected" || fail "$img: qemu-img compare differs"
  fi
  "$VHDIMG" compare -F raw "$img" "$expected" >/dev/null || fail "$img: vhdimg compare differs"
  "$VHDIMG" check "$img" >/dev/null || fail "$img: vhdimg check"
  rm -f "$img.pyvhdi"
}

json_field() { "$PY3" -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# compact_checked IMAGE FREED MOVED [LOCATORS]: --dry-run, then compact --json; the
# dry run must predict the result and change nothing; the file must end
# where the result says.
compact_checked() {
  local img=$1 freed=$2 moved=$3 locators=${4:-0} before dry real
  before=$(md5sum <"$img")
  dry=$("$VHDIMG" compact --dry-run --json "$img") || fail "$img: compact --dry-run"
  [ "$(md5sum <"$img")" = "$before" ] || fail "$img: --dry-run changed the file"
  real=$("$VHDIMG" compact --json "$img") || fail "$img: compact"
  for k in blocks-freed blocks-moved locators-moved file-size-after bytes-reclaimed; do
    [ "$(echo "$dry" | json_field $k)" = "$(echo "$real" | json_field $k)" ] ||
      fail "$img: --dry-run predicted $k $(echo "$dry" | json_field $k), got $(echo "$real" | json_field $k)"
  done
  [ "$(echo "$real" | json_field blocks-freed)" = "$freed" ] || fail "$img: $real; expected $freed blocks freed"
  [ "$(echo "$real" | json_field blocks-moved)" = "$moved" ] || fail "$img: $real; expected $moved blocks moved"
  [ "$(echo "$real" | json_field locators-moved)" = "$locators" ] ||
    fail "$img: $real; expected the data of $locators parent locators moved"
  [ "$(stat -c %s "$img")" = "$(echo "$real" | json_field file-size-after)" ] || fail "$img: file size is not the reported one"
  [ "$(echo "$real" | json_field bytes-reclaimed)" -gt 0 ] || fail "$img: nothing reclaimed"
}

# --- dynamic, written by the engine: zero blocks anywhere ------------------
"$VHDIMG" create -t dynamic --exact d.vhd $((20 * 1024 * 1024 + 512))
"$WRITE_HELPER" d.vhd 0 1M 0x11 2M 2M 0 4M 1M 0 6M 64K 0x22 10M 2M 0 16M 4K 0x33 \
  $((20 * 1024 * 1024 - 512)) 1K 0
make_raw d.raw $((20 * 1024 * 1024 + 512)) 0 1M 0x11 6M 64K 0x22 16M 4K 0x33
reads_as d.raw d.vhd
# blocks 1, 2, 5, 9 and 10 hold only zeros; 8 and 3 move into the places
# of 1 and 2.
compact_checked d.vhd 5 2
reads_as d.raw d.vhd
out=$("$VHDIMG" compact d.vhd)
echo "$out" | grep -q "reclaimed 0 bytes" || fail "a second compaction: $out"

# --- cut short at every write, sync and truncate: a rerun finishes ----------
# Power-cut mode: from the Nth write, sync or truncate on, nothing reaches
# the file.  After each such cut the disk reads the same and checks without
# errors, and compacting again ends the file where one uninterrupted run
# does: old places of moved blocks a cut left behind are copies of blocks
# in use, known as such, not bytes of another tool.
# cut_short_sweep IMAGE RAW: the sweep over a copy of IMAGE, which reads as RAW.
cut_short_sweep() {
  local img0=$1 raw=$2 clean_size n rc rc2
  cp "$img0" cs.vhd
  "$VHDIMG" compact cs.vhd >/dev/null || fail "$img0: compact of the image for the cut-short runs"
  clean_size=$(stat -c %s cs.vhd)
  [ "$clean_size" -lt "$(stat -c %s "$img0")" ] || fail "$img0: the cut-short image does not get shorter"
  n=0 rc=1
  while [ "$rc" != 0 ]; do
    n=$((n + 1))
    [ $n -le 200 ] || fail "$img0: compact still cut short after 200 operations"
    cp "$img0" cs.vhd
    rc=0
    VHDNBD_FAULT_AFTER=$n "$VHDIMG" compact cs.vhd >/dev/null 2>err.out || rc=$?
    [ "$rc" = 0 ] && break
    [ "$rc" = 1 ] || { cat err.out >&2; fail "$img0: compact cut short at operation $n: exit $rc"; }
    "$VHDIMG" compare -F raw cs.vhd "$raw" >/dev/null ||
      fail "$img0: compact cut short at operation $n: the disk reads differently"
    rc2=0; "$VHDIMG" check cs.vhd >check.out 2>&1 || rc2=$?
    [ "$rc2" = 0 ] || [ "$rc2" = 3 ] ||
      { cat check.out >&2; fail "$img0: compact cut short at operation $n: check exit $rc2"; }
    "$VHDIMG" compact cs.vhd >/dev/null 2>err.out ||
      { cat err.out >&2; fail "$img0: compact again after a cut at operation $n"; }
    # No longer than one run leaves it (a locator moved down by the cut run
    # may come out with less room than it had).
    [ "$(stat -c %s cs.vhd)" -le "$clean_size" ] ||
      fail "$img0: compact again after a cut at operation $n ($(cat err.out)): $(stat -c %s cs.vhd) bytes, one run gives $clean_size"
    "$VHDIMG" compare -F raw cs.vhd "$raw" >/dev/null ||
      fail "$img0: compact again after a cut at operation $n: the disk reads differently"
    "$VHDIMG" check cs.vhd >check.out 2>&1 ||
      { cat check.out >&2; fail "$img0: compact again after a cut at operation $n: check"; }
    rc=1
  done
  [ $n -gt 5 ] || fail "$img0: compact finished within $n operations: nothing was cut short"
}
# 512 KiB blocks (data aligned on 4 KiB), some sectors present.
"$VHDIMG" create -t dynamic --block-size 512K --exact cs0.vhd 5M
"$WRITE_HELPER" cs0.vhd 0 64K 0x11 512K 512K 0 1M 512K 0x22 1536K 512K 0 2M 8K 0x33 \
  3584K 100K 0x44 4608K 4K 0x55
make_raw cs0.raw 5M 0 64K 0x11 1M 512K 0x22 2M 8K 0x33 3584K 100K 0x44 4608K 4K 0x55
cut_short_sweep cs0.vhd cs0.raw
# 4 KiB blocks back to back: the new footer lands on a moved block's old
# bitmap, so a cut before the file is cut leaves that copy without it.
"$VHDIMG" create -t dynamic --block-size 4K --exact cs1.vhd 64K 2>/dev/null
"$WRITE_HELPER" cs1.vhd 0 2K 0x11 4K 4K 0 8K 4K 0x22 12K 4K 0 16K 1K 0x33 40K 4K 0x44 60K 512 0x55
make_raw cs1.raw 64K 0 2K 0x11 8K 4K 0x22 16K 1K 0x33 40K 4K 0x44 60K 512 0x55
cut_short_sweep cs1.vhd cs1.raw
# The old place whose bitmap the footer covers ends where the file's data
# ends.
"$VHDIMG" create -t dynamic --block-size 4K --exact cs2.vhd 64K 2>/dev/null
"$WRITE_HELPER" cs2.vhd 0 4K 0x11 4K 4K 0 8K 4K 0x22
make_raw cs2.raw 64K 0 4K 0x11 8K 4K 0x22
cut_short_sweep cs2.vhd cs2.raw
# 2 MiB blocks, copied in 1 MiB chunks: a copy cut short holds the first
# chunk, then the blank space it was going into.
"$VHDIMG" create -t dynamic --exact cs3.vhd 10M
"$WRITE_HELPER" cs3.vhd 0 2M 0 2M 1M 0x11 4M 4K 0 6M 512 0x22 8M 2M 0x33
make_raw cs3.raw 10M 2M 1M 0x11 6M 512 0x22 8M 2M 0x33
cut_short_sweep cs3.vhd cs3.raw
# Other writers' layouts (Xen Orchestra's 1 KiB blocks, VirtualBox's
# 64 KiB ones): a moved block whose first sectors are absent, cut short
# after the footer took its old bitmap's place, shows nothing before its
# first present sector.
"$PY3" "$top_srcdir/tests/interop/make-foreign-vhd.py" fx >/dev/null || fail "make-foreign-vhd.py"
cut_short_sweep fx/xo-1k.vhd fx/xo-1k.raw
cut_short_sweep fx/vbox-dyn.vhd fx/vbox-dyn.raw

# --- dynamic, written by QEMU ----------------------------------------------
qemu-img create -q -f vpc q.vhd 16M
qemu-io -f vpc -c 'write -q -P 0x44 0 64K' -c 'write -q -P 0 4M 2M' -c 'write -q -P 0x45 12M 4K' q.vhd
size=$(qemu_vsize q.vhd)
make_raw q.raw "$size" 0 64K 0x44 12M 4K 0x45
reads_as q.raw q.vhd
compact_checked q.vhd 1 1
reads_as q.raw q.vhd

# --- a chain of 3 with 4 KiB blocks ------------------------------------------
"$VHDIMG" create -t dynamic --block-size 4K --exact base.vhd $((1024 * 1024 + 1536))
"$WRITE_HELPER" base.vhd 0 64K 0x51
"$VHDIMG" create -b base.vhd mid.vhd
"$WRITE_HELPER" mid.vhd 4K 4K 0 100K 4K 0 200K 8K 0x61
"$VHDIMG" create -b mid.vhd top.vhd
"$WRITE_HELPER" top.vhd 8K 4K 0 300K 4K 0 400K 4K 0x71 500K 4K 0
make_raw chain.raw $((1024 * 1024 + 1536)) 0 64K 0x51 4K 4K 0 8K 4K 0 200K 8K 0x61 400K 4K 0x71
reads_as chain.raw top.vhd mid.vhd base.vhd
# mid: 4K hides base data and stays, 100K is freed, 204K moves into it.
compact_checked mid.vhd 1 1
# top: 8K hides base data and stays, 300K and 500K are freed, 400K moves
# into 300K's place.
compact_checked top.vhd 2 1
reads_as chain.raw top.vhd mid.vhd base.vhd

# --- parent locator data past the blocks ------------------------------------
# A rebase that found no room among the blocks put it there; compact moves
# it down to right after the blocks (the file then ends after it), and the
# header's W2ru and W2ku locators, read here by the format's layout, still
# hold the parent's paths.  Cut short anywhere, a rerun ends where one
# uninterrupted run does.
mkdir -p loc && cd loc
# 64 KiB blocks: no 4 KiB alignment padding among them to take the data.
"$VHDIMG" create --block-size 64K base.vhd 8M >/dev/null
"$WRITE_HELPER" base.vhd 0 2M 0x11
"$VHDIMG" create -b base.vhd top.vhd >/dev/null
"$WRITE_HELPER" top.vhd 1M 2M 0x22 6M 1M 0   # the last blocks: zeros over zeros
"$VHDIMG" rebase -u -b base.vhd top.vhd || fail "rebase -u onto the same parent"
make_raw loc.exp "$(info_field base.vhd virtual-size)" 0 2M 0x11 1M 2M 0x22
# layout IMAGE: "START END BLOCKS_END" of the header's locator data and
# where the last block ends; fails unless the locators hold the relative
# and absolute paths of base.vhd.
layout() {
  "$PY3" - "$1" "$(pwd -P)/base.vhd" <<'PYEOF'
import struct, sys
d = open(sys.argv[1], "rb").read()
h = d[512:1536]
bat_off, = struct.unpack(">Q", h[16:24])
n, bs = struct.unpack(">II", h[28:36])
span = ((bs // 512 + 7) // 8 + 511) // 512 * 512 + bs
ends = [e * 512 + span for e in struct.unpack(">%dI" % n, d[bat_off:bat_off + 4 * n]) if e != 0xFFFFFFFF]
locs, start, end = {}, len(d), 0
for i in range(8):
    code, space, length, _, off = struct.unpack(">IIIIQ", h[576 + 24 * i:600 + 24 * i])
    if code:
        locs[code] = d[off:off + length].decode("utf-16-le")
        start, end = min(start, off), max(end, off + space)
assert locs == {0x57327275: ".\\base.vhd", 0x57326B75: sys.argv[2]}, locs
print(start, end, max(ends))
PYEOF
}
read -r start before_end blocks_end < <(layout top.vhd) || fail "the locators after rebase -u"
[ "$start" -ge "$blocks_end" ] && [ "$(stat -c %s top.vhd)" = $((before_end + 512)) ] ||
  fail "rebase -u left the locator data among the blocks ($start-$before_end, blocks end at $blocks_end)"
cp top.vhd top.orig
cut_short_sweep top.orig loc.exp
compact_checked top.vhd 16 0 2
read -r start end blocks_end < <(layout top.vhd) || fail "the locators after compact"
[ "$start" = "$blocks_end" ] ||
  fail "the locator data starts at $start after compact, not where the blocks end ($blocks_end)"
[ "$(stat -c %s top.vhd)" = $((end + 512)) ] ||
  fail "the file is $(stat -c %s top.vhd) bytes; it should end right after the locator data ($end)"
reads_as loc.exp top.vhd base.vhd
out=$("$VHDIMG" compact --json top.vhd) || fail "compact again"
[ "$(json_field bytes-reclaimed <<<"$out")" = 0 ] || fail "a second compact still did something: $out"
cd ..

# --- a sparse gap of 40 GiB --------------------------------------------------
# One block placed 40 GiB into the file, and a sector of someone's bytes
# right after the BAT: the gap between is a hole, blank without a read.
# Compaction used to read it a sector at a time (80 million reads); the
# block must move down past the foreign sector, which stays.
"$VHDIMG" create -t dynamic sparse.vhd 64M >/dev/null
"$PY3" - sparse.vhd <<'PY' || fail "building the sparse image"
import struct, sys
path = sys.argv[1]
with open(path, "r+b") as f:
    footer = f.read(512)
    f.seek(512)
    header = bytearray(f.read(1024))
    bat_off = struct.unpack(">Q", header[16:24])[0]
    entries = struct.unpack(">I", header[28:32])[0]
    end = (bat_off + entries * 4 + 511) // 512 * 512
    f.seek(end)
    f.write(b"\x77" * 512)                      # someone's sector
    block = 40 << 30
    f.seek(bat_off)
    f.write(struct.pack(">I", block // 512))    # BAT entry 0
    f.seek(block)
    f.write(b"\x80" + bytes(511))               # bitmap: sector 0 present
    f.write(b"\x42" * 512)                      # its data
    f.seek(block + 512 + (2 << 20))
    f.write(footer)                             # the trailing footer
PY
printf '\x42%.0s' $(seq 512) >sparse.exp
truncate -s 64M sparse.exp
"$VHDIMG" compare -F raw sparse.vhd sparse.exp >/dev/null || fail "the sparse image reads wrong"
# The reads are counted under strace where it is installed.
if command -v strace >/dev/null 2>&1; then
  # LeakSanitizer does not run under ptrace.
  trace=(env ASAN_OPTIONS=detect_leaks=0 strace -f -c -e trace=pread64 -o pread.count)
else
  echo "PARTIAL: strace is not installed: the reads of the hole are not counted"
  trace=()
fi
timeout 120 "${trace[@]}" "$VHDIMG" compact sparse.vhd >compact.out 2>&1 ||
  { cat compact.out >&2; fail "compacting the image with a 40 GiB hole failed or took over 120 s"; }
if [ ${#trace[@]} -gt 0 ]; then
  reads=$(awk '$NF == "pread64" { print $4 }' pread.count)
  [ -n "$reads" ] && [ "$reads" -lt 10000 ] ||
    { cat pread.count >&2; fail "compact made ${reads:-?} reads for an image with one block"; }
  echo "compact of the image with a 40 GiB hole: $reads reads"
fi
[ "$(stat -c %s sparse.vhd)" -lt $((4 << 20)) ] ||
  fail "after compact the sparse image is still $(stat -c %s sparse.vhd) bytes"
"$VHDIMG" compare -F raw sparse.vhd sparse.exp >/dev/null ||
  fail "compact changed the sparse image's disk"
qemu-img compare -q -f vpc -F raw sparse.vhd sparse.exp ||
  fail "qemu-img reads the compacted sparse image differently"
rm -f sparse.vhd sparse.exp

# --- refusals ----------------------------------------------------------------
"$VHDIMG" create -t fixed f.vhd 1M
expect_exit 1 "$VHDIMG" compact f.vhd 2>err.out
grep -q fixed err.out || { cat err.out >&2; fail "compact of a fixed image: no reason given"; }
expect_exit 2 "$VHDIMG" compact 2>/dev/null
expect_exit 2 "$VHDIMG" compact d.vhd extra 2>/dev/null
if [ -x "$VHDNBD" ]; then
  "$WRITE_HELPER" d.vhd 14M 2M 0
  before=$(md5sum <d.vhd)
  start_vhdnbd "$TMPD/nbd.sock" d.vhd
  expect_exit 1 "$VHDIMG" compact d.vhd 2>err.out
  grep -qi lock err.out || { cat err.out >&2; fail "compact of a served image: not refused by the lock"; }
  stop_vhdnbd
  [ "$(md5sum <d.vhd)" = "$before" ] || fail "a refused compaction changed the image"
fi
echo ok
