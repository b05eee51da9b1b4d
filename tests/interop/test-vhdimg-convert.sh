#!/bin/bash
# vhdimg convert of raw disk images: to dynamic (block sizes 512 B to 2 MiB),
# fixed and raw, read back whole by qemu-img and libvhdi; holes and zero
# chunks stay unallocated; sizes that are not a multiple of the block size or
# of 512; the CHS rule, --exact and --align; a raw source is never guessed;
# a failed conversion leaves DST as it was.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires qemu-img
requires_py pyvhdi
cd "$TMPD"
dump="$PY3 $top_srcdir/tests/interop/pyvhdi-dump.py"

# make_source FILE SIZE: a sparse raw disk of SIZE bytes with random data
# across block boundaries, holes at and inside blocks, explicitly written
# zeros (allocated, not a hole) and data in the last, partial sector.
make_source() {
  "$PY3" - "$@" <<'PYEOF'
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
K, M = 1024, 1024 * 1024
rnd = lambda n: os.urandom(n).replace(b"\0", b"\1")  # no zero bytes: exact zero maps
with open(path, "wb") as f:
    f.truncate(size)
    for off, data in ((0, rnd(1000)),                       # inside the first sector/block
                      (64 * K - 512, rnd(1024)),             # across a 64K boundary
                      (2 * M - 4 * K, rnd(8 * K)),           # across the 2M boundary
                      (2 * M + 300 * K, bytes(256 * K)),     # written zeros
                      (2 * M + 700 * K + 5, rnd(3 * K)),     # unaligned, inside a block
                      (size - 700, rnd(700))):               # up to the odd end
        f.seek(off)
        f.write(data)
PYEOF
}

# nonzero_blocks FILE BS: the indexes of the BS-byte blocks of FILE holding a
# non-zero byte, one line.
nonzero_blocks() {
  "$PY3" - "$@" <<'PYEOF'
import sys
data, bs = open(sys.argv[1], "rb").read(), int(sys.argv[2])
print(" ".join(str(i // bs) for i in range(0, len(data), bs) if any(data[i:i + bs])))
PYEOF
}

# data_blocks IMAGE BS: the BS-byte blocks qemu-img map (vhdimg map for
# blocks QEMU cannot read, see same_content) reports data in.
data_blocks() {
  if [ "$2" -lt 4096 ]; then "$VHDIMG" map --json "$1"; else qemu-img map -f vpc --output=json "$1"; fi |
    "$PY3" -c '
import json, sys
bs = int(sys.argv[1])
blocks = set()
for e in json.load(sys.stdin):
    if e["data"]:
        blocks.update(range(e["start"] // bs, (e["start"] + e["length"] - 1) // bs + 1))
print(" ".join(str(b) for b in sorted(blocks)))' "$2"
}

# padded SRC SIZE OUT: SRC with zeros appended up to SIZE bytes.
padded() { cp "$1" "$3" && truncate -s "$2" "$3"; }

# read_dynamic IMAGE OUT: the virtual disk of a dynamic IMAGE, read by the
# book (footer, header, BAT, MSB-first sector bitmaps) in a few lines of Python.
read_dynamic() {
  "$PY3" - "$@" <<'PYEOF'
import struct, sys
img, out = open(sys.argv[1], "rb").read(), sys.argv[2]
size = struct.unpack(">Q", img[48:56])[0]
hdr = struct.unpack(">Q", img[16:24])[0]
bat_off, = struct.unpack(">Q", img[hdr + 16:hdr + 24])
entries, bs = struct.unpack(">II", img[hdr + 28:hdr + 36])
bitmap = (bs // 512 + 7) // 8
bitmap = (bitmap + 511) // 512 * 512
disk = bytearray(size)
for i in range(entries):
    e, = struct.unpack(">I", img[bat_off + 4 * i:bat_off + 4 * i + 4])
    if e == 0xFFFFFFFF:
        continue
    base = e * 512
    for s in range(bs // 512):
        if img[base + s // 8] & (0x80 >> (s % 8)):
            v = i * bs + s * 512
            disk[v:v + 512] = img[base + bitmap + s * 512:base + bitmap + s * 512 + 512]
open(out, "wb").write(disk[:size])
PYEOF
}

# same_content IMAGE EXPECTED: qemu-img and libvhdi both read EXPECTED from
# IMAGE.  Both mis-size the sector bitmap of blocks under 4 KiB (QEMU 7.2
# as (block size / 4096) rounded up to 512 bytes, i.e. 0; libvhdi refuses
# it), so images with such blocks are read by read_dynamic instead.
same_content() {
  local img=$1 expected=$2
  if [ "$(info_field "$img" type)" = fixed ] || [ "$(info_field "$img" block-size)" -ge 4096 ]; then
    qemu-img compare -q -f vpc -F raw "$img" "$expected" || fail "$img: qemu-img compare differs"
    qemu-img convert -f vpc -O raw "$img" "$img.qemu.raw"
    cmp "$img.qemu.raw" "$expected" || fail "$img: qemu-img convert reads different bytes"
    $dump "$img.pyvhdi" "$img" >/dev/null || fail "$img: libvhdi cannot read it"
    cmp "$img.pyvhdi" "$expected" || fail "$img: libvhdi reads different bytes"
  else
    read_dynamic "$img" "$img.pyvhdi"
    cmp "$img.pyvhdi" "$expected" || fail "$img: read by the book, different bytes"
  fi
  "$VHDIMG" check "$img" >/dev/null || fail "$img: vhdimg check"
  rm -f "$img.qemu.raw" "$img.pyvhdi"
}

round_up() { echo $(( ($1 + $2 - 1) / $2 * $2 )); }

# Sizes: odd (not a multiple of 512), and a multiple of 512 that is not one of
# the block size.
for size in $((3 * 1024 * 1024 + 12345)) $((4 * 1024 * 1024 + 3 * 512)); do
  make_source src.raw $size
  sectors=$(round_up $size 512)
  padded src.raw $sectors src.sectors
  sparse=yes
  "$PY3" -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); sys.exit(os.lseek(fd, 0, os.SEEK_HOLE) >= os.fstat(fd).st_size)' src.raw ||
    { sparse=no; echo "PARTIAL: $TMPD does not keep holes; hole checks of the raw output skipped"; }

  # Dynamic, with the CHS rule (the default) and every block size class.
  for bs in 512 1K 4K 64K 512K 2M; do
    out=dyn-$bs.vhd
    "$VHDIMG" convert -f raw -O dynamic --block-size $bs src.raw $out
    bsb=$(info_field $out block-size)
    [ "$bsb" = "$("$PY3" -c 'import sys; s = sys.argv[1]; print(int(s[:-1]) * 1024 ** "KM".index(s[-1]) * 1024 if s[-1] in "KM" else int(s))' $bs)" ] ||
      fail "$out: block size $bsb, asked for $bs"
    vsize=$(info_field $out virtual-size)
    [ "$vsize" = "$(qemu_vsize $out)" ] || fail "$out: vhdimg says $vsize bytes, qemu-img $(qemu_vsize $out)"
    [ "$vsize" -ge "$sectors" ] || fail "$out: virtual size $vsize is less than the source's $sectors"
    [ "$(info_field $out chs-size)" = "$vsize" ] ||
      fail "$out: without --exact the size should be a CHS geometry's ($(info_field $out chs-size) != $vsize)"
    padded src.raw $vsize expected.raw
    same_content $out expected.raw
    # Holes and zero chunks stay unallocated: the blocks holding data are
    # exactly those with a non-zero byte.
    want=$(nonzero_blocks expected.raw $bsb)
    [ "$(data_blocks $out $bsb)" = "$want" ] ||
      fail "$out: qemu-img map shows data in blocks '$(data_blocks $out $bsb)', expected '$want'"
    [ "$(info_field $out allocated-blocks)" = "$(echo $want | wc -w)" ] ||
      fail "$out: $(info_field $out allocated-blocks) blocks allocated, expected $(echo $want | wc -w)"
    "$VHDIMG" compare -F raw $out src.raw >/dev/null || fail "$out: vhdimg compare with its source"
  done

  # --exact keeps the size (rounded up to a sector) for both VHD types.
  for fmt in dynamic fixed; do
    out=exact-$fmt.vhd
    "$VHDIMG" convert -f raw -O $fmt --exact src.raw $out
    [ "$(info_field $out virtual-size)" = $sectors ] && [ "$(qemu_vsize $out)" = $sectors ] ||
      fail "$out: --exact gives $(info_field $out virtual-size) bytes (qemu: $(qemu_vsize $out)), expected $sectors"
    same_content $out src.sectors
  done
  [ "$(stat -c %s exact-fixed.vhd)" = $((sectors + 512)) ] || fail "fixed output: file size $(stat -c %s exact-fixed.vhd)"

  # Fixed with the CHS rule.
  "$VHDIMG" convert -f raw -O fixed src.raw fixed.vhd
  vsize=$(info_field fixed.vhd virtual-size)
  [ "$vsize" = "$(info_field fixed.vhd chs-size)" ] && [ "$vsize" -ge $sectors ] ||
    fail "fixed.vhd: virtual size $vsize, CHS $(info_field fixed.vhd chs-size), source $sectors"
  padded src.raw $vsize expected.raw
  same_content fixed.vhd expected.raw

  # Raw to raw: the sectors of the source, its holes and zero chunks as holes.
  "$VHDIMG" convert -f raw src.raw out.raw
  cmp out.raw src.sectors || fail "raw -> raw: content differs"
  if [ $sparse = yes ]; then
    "$PY3" - out.raw src.sectors <<'PYEOF' || fail "raw -> raw: zeros were written as data"
import os, sys
out, src = sys.argv[1], open(sys.argv[2], "rb").read()
fd, pos, end = os.open(out, os.O_RDONLY), 0, os.stat(out).st_size
while pos < end:
    try:
        d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    for unit in range(d - d % 4096, h, 4096):
        assert any(src[unit:unit + 4096]), f"data at {unit} where the source has zeros"
    pos = h
PYEOF
  fi

  # --align: a multiple of the alignment, exactly, whatever the output.
  for spec in "fixed --align 1M --exact" "fixed --align 1M" "dynamic --align 3M" "raw --align 64K"; do
    set -- $spec
    fmt=$1 align=$3
    case $align in *M) alignb=$((${align%M} * 1024 * 1024)) ;; *K) alignb=$((${align%K} * 1024)) ;; esac
    want=$(round_up $size $alignb)
    "$VHDIMG" convert -f raw -O $spec src.raw aligned.$fmt
    if [ $fmt = raw ]; then
      got=$(stat -c %s aligned.raw)
      padded src.raw $want expected.raw
      cmp aligned.raw expected.raw || fail "-O raw --align: content differs"
    else
      got=$(info_field aligned.$fmt virtual-size)
      [ "$(qemu_vsize aligned.$fmt)" = "$got" ] || fail "-O $spec: qemu-img says $(qemu_vsize aligned.$fmt), vhdimg $got"
      [ "$(info_field aligned.$fmt current-size)" = "$got" ] || fail "-O $spec: current size is not the size"
      padded src.raw $want expected.raw
      same_content aligned.$fmt expected.raw
    fi
    [ $((got % alignb)) = 0 ] && [ "$got" = "$want" ] ||
      fail "-O $spec: size $got, expected $want (a multiple of $alignb)"
  done
done

# A VHD converted to a VHD keeps its size (whatever --exact says).
"$VHDIMG" create --exact odd.vhd $((5 * 1024 * 1024 + 512))
"$VHDIMG" convert -O dynamic --block-size 64K odd.vhd odd2.vhd
[ "$(info_field odd2.vhd virtual-size)" = $((5 * 1024 * 1024 + 512)) ] || fail "VHD -> VHD changed the size"
[ "$(info_field odd2.vhd block-size)" = 65536 ] || fail "VHD -> dynamic: --block-size ignored"

# A source that is not a VHD is refused unless -f raw says it is raw.
rc=0
"$VHDIMG" convert -O dynamic src.raw guessed.vhd 2>err || rc=$?
[ $rc = 1 ] || fail "a raw source without -f raw: exit $rc, expected 1"
grep -q '^vhdimg: src.raw is not a VHD image (.*conectix.*); use -f raw' err ||
  fail "a raw source without -f raw: message '$(cat err)'"
rc=0
"$VHDIMG" convert -f vhd -O dynamic src.raw guessed.vhd 2>err || rc=$?
[ $rc = 1 ] && grep -q 'src.raw: footer at offset .*conectix' err && ! grep -q 'use -f raw' err ||
  fail "-f vhd of a raw file: exit $rc, message '$(cat err)'"
# A damaged VHD is still a VHD: its own error, not "use -f raw".
cp exact-dynamic.vhd damaged.vhd
printf 'XXXXXXXXXXXXXXXX' | dd of=damaged.vhd bs=1 seek=512 conv=notrunc status=none
rc=0
"$VHDIMG" convert damaged.vhd damaged.raw 2>err || rc=$?
[ $rc = 1 ] && ! grep -q 'use -f raw' err || fail "damaged VHD: exit $rc, message '$(cat err)'"
[ ! -e guessed.vhd ] && [ ! -e damaged.raw ] || fail "a refused conversion created DST"

# Usage errors: exit 2, nothing created.
expect_exit 2 "$VHDIMG" convert -f qcow2 src.raw u.vhd
expect_exit 2 "$VHDIMG" convert -f raw -O dynamic --block-size 3K src.raw u.vhd
expect_exit 2 "$VHDIMG" convert -f raw -O dynamic --block-size 256 src.raw u.vhd
expect_exit 2 "$VHDIMG" convert -f raw -O fixed --block-size 64K src.raw u.vhd
expect_exit 2 "$VHDIMG" convert -f raw --exact src.raw u.vhd
expect_exit 2 "$VHDIMG" convert -f raw -O fixed --align 1000 src.raw u.vhd
[ ! -e u.vhd ] || fail "a usage error created DST"

# A failed conversion leaves DST as it was and no temporary file.
mkdir fail && cd fail
no_leftovers() {
  [ "$(ls -A | sort | tr '\n' ' ')" = "dst.vhd dst.vhd.before " ] ||
    fail "$1: files left in the destination directory: $(ls -A | tr '\n' ' ')"
  cmp dst.vhd dst.vhd.before || fail "$1: DST was changed"
}
"$VHDIMG" create dst.vhd 1M
cp dst.vhd dst.vhd.before
# A file size limit makes the writes fail half-way (EFBIG).
for fmt in dynamic fixed raw; do
  rc=0
  (trap '' XFSZ; ulimit -f 1024; exec "$VHDIMG" convert -f raw -O $fmt ../src.raw dst.vhd) 2>../err || rc=$?
  [ $rc = 1 ] || fail "-O $fmt beyond the file size limit: exit $rc, expected 1"
  grep -q 'File too large' ../err || fail "-O $fmt beyond the file size limit: message '$(cat ../err)'"
  no_leftovers "-O $fmt beyond the file size limit"
done
# The engine's writes fail on the 6th write (ENOSPC).
rc=0
VHDNBD_FAULT_AFTER=5 VHDNBD_FAULT_ERRNO=ENOSPC "$VHDIMG" convert -f raw -O dynamic --block-size 4K \
  ../src.raw dst.vhd 2>../err || rc=$?
[ $rc = 1 ] && grep -q 'No space left' ../err || fail "ENOSPC: exit $rc, message '$(cat ../err)'"
no_leftovers "ENOSPC"
# A directory that does not exist.
expect_exit 1 "$VHDIMG" convert -f raw -O dynamic ../src.raw no/such/dir.vhd
# And when it works, DST is replaced.
"$VHDIMG" convert -f raw -O dynamic ../src.raw dst.vhd
"$VHDIMG" compare -F raw dst.vhd ../src.raw >/dev/null || fail "converting over an existing DST"
[ "$(ls -A | sort | tr '\n' ' ')" = "dst.vhd dst.vhd.before " ] ||
  fail "a successful conversion left files behind: $(ls -A | tr '\n' ' ')"

# DST a symbolic link (to an existing file, or dangling): it stays a link,
# the file it points to gets the image.
cd "$TMPD"
mkdir -p linked
cp exact-dynamic.vhd linked/old.vhd
ln -s linked/old.vhd link1.vhd
ln -s linked/new.vhd link2.vhd
for l in link1.vhd link2.vhd; do
  "$VHDIMG" convert -f raw -O dynamic src.raw $l
  [ -L $l ] || fail "converting to the symbolic link $l replaced the link"
  "$VHDIMG" compare -F raw "$(readlink $l)" src.raw >/dev/null || fail "$l: its target does not hold the image"
done
[ "$(ls -A linked | sort | tr '\n' ' ')" = "new.vhd old.vhd " ] || fail "files left beside the link targets: $(ls -A linked)"

# DST a parent of SRC (itself, or through a link): refused, nothing changes,
# as converting over it would change what SRC and its siblings read.
mkdir -p chain && cd chain
"$VHDIMG" create base.vhd 8M >/dev/null
"$WRITE_HELPER" base.vhd 0 64K 0x11
"$VHDIMG" create -b base.vhd top.vhd >/dev/null
"$WRITE_HELPER" top.vhd 0 4K 0x22
ln -s base.vhd base-link.vhd
cp base.vhd base.before
for dst in base.vhd base-link.vhd; do
  "$VHDIMG" convert -O dynamic top.vhd $dst 2>err.out && fail "convert over $dst, a parent of its source, succeeded"
  grep -q "a parent of top.vhd" err.out || { cat err.out >&2; fail "the refusal does not name the parent"; }
  cmp -s base.vhd base.before || fail "a refused convert over $dst changed the parent"
done
"$VHDIMG" check top.vhd >/dev/null || fail "the chain does not check clean after the refusals"
