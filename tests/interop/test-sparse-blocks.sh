#!/bin/bash
# Disk space of new blocks (vhd_block_allocate): by default a block's space
# is reserved whole when a WRITE allocates it, so one 4 KiB WRITE into an
# empty dynamic image and into a fresh differencing child each take at
# least a block (2 MiB) of disk; with --sparse-blocks, or `sparse-blocks =
# yes` in the configuration file, the unwritten sectors stay holes and the
# same WRITE takes far less.  Either way every byte reads back as written,
# the rest as zeros or as the parent's, and qemu-img agrees after the
# server has closed the image.  vhdimg's writers keep holes: convert and
# commit put 4 KiB into each of four new blocks in far less than a block
# of disk.  Skipped where the file system of the test directory reserves
# no space.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires fallocate
requires_py nbd

M=$((1024 * 1024))
: >"$TMPD/probe"
if ! fallocate -n -l $((2 * M)) "$TMPD/probe" 2>/dev/null ||
  [ "$(stat -c %b "$TMPD/probe")" -lt 4096 ]; then
  echo "SKIP: the file system of $TMPD reserves no space (fallocate refused)" >&2
  exit 77
fi

head -c $((8 * M)) /dev/urandom >"$TMPD/parent.raw"
qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on "$TMPD/parent.raw" "$TMPD/parent.vhd"

cat >"$TMPD/write.py" <<'PY'
# write.py SOCK BASE: one 4 KiB WRITE 64 KiB into block 1, flushed; then
# the whole disk must read as BASE (a raw file) with that WRITE over it.
import sys, nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
want = bytearray(open(sys.argv[2], "rb").read())
data = bytes((i * 7 + 1) % 251 + 1 for i in range(4096))
off = 2 * 1024 * 1024 + 64 * 1024
h.pwrite(data, off)
h.flush()
want[off:off + 4096] = data
got = h.pread(len(want), 0)
assert got == want, "the disk does not read back as written"
h.shutdown()
open(sys.argv[2] + ".want", "wb").write(want)
PY

# run NAME KIND(dynamic|child) SERVER-ARGS...: serves a fresh image of that
# kind, writes, checks what it holds after the server closed it, and prints
# the bytes of disk the WRITE took (st_blocks).
run() {
  local name=$1 kind=$2 img=$TMPD/$1.vhd base before after
  shift 2
  if [ "$kind" = child ]; then
    "$VHDIMG" create -t differencing -b "$TMPD/parent.vhd" "$img" >/dev/null
    base=$TMPD/parent.raw
  else
    qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$img" $((8 * M))
    head -c $((8 * M)) /dev/zero >"$TMPD/zeros.raw"
    base=$TMPD/zeros.raw
  fi
  cp "$base" "$TMPD/$name.base"
  before=$(stat -c %b "$img")
  start_vhdnbd "$TMPD/$name.sock" "$@" "$img" 2>>"$TMPD/server.log"
  "$PY3" "$TMPD/write.py" "$TMPD/$name.sock" "$TMPD/$name.base" >&2 || fail "$name: $*"
  stop_vhdnbd
  after=$(stat -c %b "$img")
  "$VHDIMG" convert -O raw "$img" "$TMPD/$name.out" >/dev/null || fail "$name: vhdimg convert failed"
  cmp -s "$TMPD/$name.out" "$TMPD/$name.base.want" ||
    fail "$name: the image holds other bytes than were written"
  # QEMU reads a dynamic image on its own (it ignores a child's parent).
  if [ "$kind" = dynamic ]; then
    qemu-img compare -q -f vpc -F raw "$img" "$TMPD/$name.base.want" ||
      fail "$name: qemu-img reads other bytes than were written"
  fi
  echo $(((after - before) * 512))
}

printf '[global]\nsparse-blocks = yes\n' >"$TMPD/sparse.conf"
printf '[global]\nsparse-blocks = no\n' >"$TMPD/reserve.conf"
for kind in dynamic child; do
  for how in default cli config config-no; do
    case $how in
    default) args=() ;;
    cli) args=(--sparse-blocks) ;;
    config) args=(-C "$TMPD/sparse.conf") ;;
    config-no) args=(-C "$TMPD/reserve.conf") ;;
    esac
    used=$(run "$kind-$how" "$kind" "${args[@]}")
    echo "$kind, $how (${args[*]}): the 4 KiB WRITE took $used bytes of disk"
    case $how in
    default | config-no)
      [ "$used" -ge $((2 * M)) ] ||
        fail "$kind, $how: a 4 KiB WRITE into a new block took $used bytes: the block was not reserved" ;;
    *)
      [ "$used" -lt $((M / 2)) ] ||
        fail "$kind, ${args[*]}: a 4 KiB WRITE into a new block took $used bytes: the block was reserved" ;;
    esac
  done
done

# vhdimg keeps holes: its writers (convert, commit) write each block's
# data once, so reserving blocks would only take disk.  4 KiB of data in
# each of four blocks: the converted image, and a parent that a child with
# those 4 KiB commits into, grow by far less than four blocks.
head -c $((8 * M)) /dev/zero >"$TMPD/four.raw"
for b in 0 1 2 3; do
  printf 'data of block %d' "$b" | dd of="$TMPD/four.raw" bs=1 seek=$((b * 2 * M + 8192)) conv=notrunc status=none
done
"$VHDIMG" convert -f raw -O dynamic --exact "$TMPD/four.raw" "$TMPD/four.vhd" >/dev/null
used=$(($(stat -c %b "$TMPD/four.vhd") * 512))
echo "vhdimg convert: 4 blocks with 4 KiB of data each take $used bytes of disk"
[ "$used" -lt $((2 * M)) ] || fail "vhdimg convert reserved the blocks it wrote: $used bytes of disk"
"$VHDIMG" convert -O raw "$TMPD/four.vhd" "$TMPD/four.out" >/dev/null
cmp -s "$TMPD/four.raw" "$TMPD/four.out" || fail "vhdimg convert: the image holds other bytes"

qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$TMPD/base.vhd" $((8 * M))
"$VHDIMG" create -t differencing -b "$TMPD/base.vhd" "$TMPD/top.vhd" >/dev/null
start_vhdnbd "$TMPD/top.sock" --sparse-blocks "$TMPD/top.vhd" 2>>"$TMPD/server.log"
"$PY3" - "$TMPD/top.sock" "$TMPD/four.raw" <<'PY' || fail "writing the child"
import sys, nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
data = open(sys.argv[2], "rb").read()
for b in range(4):
    off = b * 2 * 1024 * 1024 + 8192
    h.pwrite(data[off:off + 4096], off)
h.flush()
h.shutdown()
PY
stop_vhdnbd
before=$(stat -c %b "$TMPD/base.vhd")
"$VHDIMG" commit "$TMPD/top.vhd" >/dev/null || fail "vhdimg commit failed"
used=$((($(stat -c %b "$TMPD/base.vhd") - before) * 512))
echo "vhdimg commit: 4 new blocks with 4 KiB of data each took $used bytes of the parent's disk"
[ "$used" -lt $((2 * M)) ] || fail "vhdimg commit reserved the parent's new blocks: $used bytes of disk"
"$VHDIMG" convert -O raw "$TMPD/base.vhd" "$TMPD/base.out" >/dev/null
cmp -s "$TMPD/four.raw" "$TMPD/base.out" || fail "vhdimg commit: the parent holds other bytes"
