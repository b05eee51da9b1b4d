#!/bin/bash
# Disk space of new blocks (vhd_block_allocate): by default a block's space
# is reserved whole when a WRITE allocates it, so one 4 KiB WRITE into an
# empty dynamic image and into a fresh differencing child each take at
# least a block (2 MiB) of disk; with --sparse-blocks, or `sparse-blocks =
# yes` in the configuration file, the unwritten sectors stay holes and the
# same WRITE takes far less.  Either way every byte reads back as written,
# the rest as zeros or as the parent's, and qemu-img agrees after the
# server has closed the image.  Skipped where the file system of the test
# directory reserves no space.
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
