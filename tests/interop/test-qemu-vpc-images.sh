#!/bin/bash
# Images made by qemu-img create -f vpc (fixed and dynamic, CHS-rounded and
# force_size, sizes that are and are not CHS-aligned): vhdimg sees the same
# virtual size as QEMU and a clean image, and data written through the engine
# reads back in QEMU as expected.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires qemu-img
requires_write_helper
cd "$TMPD"

n=0
for size in 10M 100M 1027M; do
  for sub in dynamic fixed; do
    for force in off on; do
      # Keep the run short: the 1 GiB+3 MiB fixed disks only once.
      [ $size = 1027M ] && [ $sub = fixed ] && [ $force = off ] && continue
      n=$((n + 1))
      img=q$n.vhd
      what="$size $sub force_size=$force"
      qemu-img create -q -f vpc -o subformat=$sub,force_size=$force $img $size
      qsize=$(qemu_vsize $img)
      fields=$(info_field $img virtual-size type) || fail "$what: vhdimg info cannot open it"
      { read -r vsize; read -r type; } <<<"$fields"
      [ "$vsize" = "$qsize" ] || fail "$what: vhdimg says $vsize bytes, qemu-img says $qsize"
      [ "$type" = $sub ] || fail "$what: vhdimg reports type $type"
      "$VHDIMG" check $img >check.out || { cat check.out >&2; fail "$what: vhdimg check is not clean"; }

      # Aligned and unaligned writes, across a block boundary, up to the last byte.
      writes=(0 1M 0xab  2096640 1536 0xcd  $((3 * 1048576 + 1000)) 3000 0x5a
        $((vsize - 4096)) 4096 0x77)
      "$WRITE_HELPER" $img "${writes[@]}"
      make_raw expected.raw $vsize "${writes[@]}"
      qemu-img compare -q -f vpc -F raw $img expected.raw ||
        fail "$what: QEMU reads back other data than the engine wrote"
      "$VHDIMG" check $img >check.out || { cat check.out >&2; fail "$what: not clean after writes"; }
      [ "$(qemu_vsize $img)" = "$qsize" ] || fail "$what: writes changed QEMU's virtual size"
      rm -f $img expected.raw
    done
  done
done
[ $n -eq 11 ] || fail "ran $n of 11 cases"
