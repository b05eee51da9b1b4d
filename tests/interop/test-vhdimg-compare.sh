#!/bin/bash
# vhdimg compare: equal images exit 0, different ones exit 1 with the exact
# offset of the first differing byte (at the start, at block boundaries, in
# the last sector), through chains of 3, raw against VHD, images of different
# sizes; exit statuses agree with qemu-img compare's; errors exit 2; ranges
# both sides map as zero are not read.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires qemu-img
requires_write_helper
cd "$TMPD"

# compare_is WANT_EXIT WANT_OFFSET A B [OPTIONS...]: vhdimg compare exits
# WANT_EXIT and, when 1, names WANT_OFFSET.
compare_is() {
  local want=$1 off=$2 a=$3 b=$4 rc=0
  shift 4
  "$VHDIMG" compare "$@" "$a" "$b" >out 2>err || rc=$?
  [ $rc = "$want" ] || { cat out err >&2; fail "compare $* $a $b: exit $rc, expected $want"; }
  case $want in
    0) grep -qx 'Images are identical.' out || fail "compare $a $b: output '$(cat out)'" ;;
    1) [ "$(grep -c . out | tail -1)" -ge 1 ] && [ "$(tail -n 1 out)" = "Content mismatch at offset $off!" ] ||
         fail "compare $* $a $b: '$(tail -n 1 out)', expected offset $off" ;;
  esac
}

# qemu_agrees A B FA FB: qemu-img compare's exit status is ours, and its
# offset our offset's sector (it reports sectors).
qemu_agrees() {
  local a=$1 b=$2 fa=$3 fb=$4 ours=0 theirs=0
  "$VHDIMG" compare $([ $fa = raw ] && echo -f raw) $([ $fb = raw ] && echo -F raw) "$a" "$b" >ours.out || ours=$?
  qemu-img compare -f $fa -F $fb "$a" "$b" >theirs.out 2>&1 || theirs=$?
  [ $ours = $theirs ] || fail "compare $a $b: vhdimg exits $ours, qemu-img $theirs"
  if [ $ours = 1 ]; then
    local o t
    o=$(sed -n 's/^Content mismatch at offset \([0-9]*\)!$/\1/p' ours.out)
    t=$(sed -n 's/^Content mismatch at offset \([0-9]*\)!$/\1/p' theirs.out)
    [ $((o / 512 * 512)) = "$t" ] || fail "compare $a $b: vhdimg offset $o, qemu-img $t"
  fi
}

# flip FILE OFFSET: changes the byte at OFFSET.
flip() {
  "$PY3" - "$@" <<'PYEOF'
import sys
with open(sys.argv[1], "r+b") as f:
    off = int(sys.argv[2])
    f.seek(off)
    b = f.read(1)
    f.seek(off)
    f.write(bytes([(b[0] if b else 0) ^ 0x5a]))
PYEOF
}

M=$((1024 * 1024))
# A chain of 3: base <- child <- grandchild, 2 MiB blocks, 8 MiB of disk.
"$VHDIMG" create -t dynamic --exact base.vhd 8M
"$WRITE_HELPER" base.vhd 0 3M 0x10  7M 1M 0x11
"$VHDIMG" create -b base.vhd child.vhd
"$WRITE_HELPER" child.vhd 1M 4K 0x20  2044K 8K 0x21
"$VHDIMG" create -b child.vhd grandchild.vhd
"$WRITE_HELPER" grandchild.vhd 0 512 0x30  5M 1M 0x31  $((8 * M - 1)) 1 0x32
make_raw chain.raw 8M 0 3M 0x10  7M 1M 0x11  1M 4K 0x20  2044K 8K 0x21 \
  0 512 0x30  5M 1M 0x31  $((8 * M - 1)) 1 0x32
vsize=$(info_field grandchild.vhd virtual-size)
[ "$vsize" = $((8 * M)) ] || fail "chain: virtual size $vsize"

compare_is 0 - grandchild.vhd chain.raw -F raw
compare_is 0 - chain.raw grandchild.vhd -f raw
compare_is 0 - grandchild.vhd grandchild.vhd
# The chain's levels differ from each other where the children wrote.
compare_is 1 0 grandchild.vhd child.vhd
compare_is 1 $((1 * M)) child.vhd base.vhd
"$VHDIMG" convert -O dynamic grandchild.vhd flat.vhd
compare_is 0 - grandchild.vhd flat.vhd
compare_is 0 - chain.raw chain.raw -f raw -F raw

# One byte changed, at the start, around sector and block boundaries, in an
# unallocated range, and in the last sector: the offset is exact, whichever
# side is raw, and when both are VHDs.
for off in 0 1 511 512 $((2 * M - 1)) $((2 * M)) $((4 * M + 12345)) $((vsize - 512)) $((vsize - 2)) $((vsize - 1)); do
  cp chain.raw mod.raw
  flip mod.raw $off
  compare_is 1 $off grandchild.vhd mod.raw -F raw
  compare_is 1 $off mod.raw grandchild.vhd -f raw
  compare_is 1 $off chain.raw mod.raw -f raw -F raw
  "$VHDIMG" convert -f raw -O dynamic --exact mod.raw mod.vhd
  compare_is 1 $off grandchild.vhd mod.vhd
  compare_is 1 $off flat.vhd mod.vhd
  qemu_agrees flat.vhd mod.vhd vpc vpc
  qemu_agrees flat.vhd mod.raw vpc raw
done
# Two differences: the first is reported.
cp chain.raw mod.raw
flip mod.raw $((6 * M + 3))
flip mod.raw $((3 * M + 700))
compare_is 1 $((3 * M + 700)) grandchild.vhd mod.raw -F raw

# Sizes differ: equal when the larger's extra part reads as zeros.
cp chain.raw big.raw
truncate -s $((vsize + 3 * M + 1000)) big.raw
compare_is 0 - grandchild.vhd big.raw -F raw
grep -q 'sizes differ' out || fail "a size mismatch is not reported"
qemu_agrees flat.vhd big.raw vpc raw
printf 'x' | dd of=big.raw bs=1 seek=$((vsize + 3 * M + 999)) conv=notrunc status=none
compare_is 1 $((vsize + 3 * M + 999)) grandchild.vhd big.raw -F raw
compare_is 1 $((vsize + 3 * M + 999)) big.raw grandchild.vhd -f raw
qemu_agrees flat.vhd big.raw vpc raw
head -c $((5 * M)) chain.raw >small.raw
compare_is 1 $((5 * M)) small.raw grandchild.vhd -f raw
# A raw file whose size is not a multiple of 512 reads on as zeros.
head -c $((vsize - 1000)) chain.raw >odd.raw
truncate -s $((vsize - 1)) odd.raw
"$VHDIMG" convert -f raw -O dynamic --exact odd.raw odd.vhd
compare_is 0 - odd.vhd odd.raw -F raw

# Errors: exit 2.  A file without a VHD footer is not guessed to be raw.
compare_is 2 - chain.raw grandchild.vhd
grep -q '^vhdimg: chain.raw is not a VHD image (.*); use -f raw' err || fail "A not a VHD: '$(cat err)'"
compare_is 2 - grandchild.vhd chain.raw
grep -q '^vhdimg: chain.raw is not a VHD image (.*); use -F raw' err || fail "B not a VHD: '$(cat err)'"
compare_is 2 - grandchild.vhd missing.vhd
grep -q 'missing.vhd' err || fail "a missing image is not named: '$(cat err)'"
compare_is 2 - grandchild.vhd chain.raw -F qcow2
expect_exit 2 "$VHDIMG" compare grandchild.vhd
expect_exit 2 "$VHDIMG" compare grandchild.vhd flat.vhd chain.raw

# Only ranges holding data are read: two images of nearly 2 TiB, each with
# a few bytes of data, compare at once.
"$VHDIMG" create huge1.vhd 2000G
"$VHDIMG" create huge2.vhd 2000G
hsize=$(info_field huge1.vhd virtual-size)
"$WRITE_HELPER" huge1.vhd 1000G 4K 0x44  $((hsize - 512)) 512 0x45
"$WRITE_HELPER" huge2.vhd 1000G 4K 0x44  $((hsize - 512)) 512 0x45
truncate -s $hsize huge.raw
if "$PY3" -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); sys.exit(os.lseek(fd, 0, os.SEEK_HOLE) != 0)' huge.raw; then
  rc=0
  timeout 60 "$VHDIMG" compare -f raw -F vhd huge.raw huge1.vhd >out || rc=$?
  [ $rc = 1 ] && [ "$(tail -n 1 out)" = "Content mismatch at offset $((1000 * 1024 * M))!" ] ||
    fail "a sparse 2000 GiB raw file: exit $rc, '$(tail -n 1 out)' (124: it read the holes)"
else
  echo "PARTIAL: $TMPD does not report holes; the sparse raw comparison is skipped"
fi
rc=0
timeout 60 "$VHDIMG" compare huge1.vhd huge2.vhd >out || rc=$?
[ $rc = 0 ] || fail "two sparse 2000 GiB images: exit $rc (124: it read the zeros)"
"$WRITE_HELPER" huge2.vhd $((hsize - 7)) 1 0x46
compare_is 1 $((hsize - 7)) huge1.vhd huge2.vhd
