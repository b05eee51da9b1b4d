#!/bin/bash
# Images made by vhdimg read back by QEMU, and vhdimg's view of images QEMU
# wrote: create (fixed, dynamic, differencing chains of 2 and 3), write with
# qemu-io or the engine, compare with qemu-img compare and cmp.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires qemu-img
requires qemu-io
requires_write_helper
cd "$TMPD"

# The same writes go to the image (through qemu-io) and to the expected raw.
writes=(0 1M 0xab  5M 4K 0xcd  7M 3K 0x5a)

for type in dynamic fixed; do
  img=$type.vhd
  "$VHDIMG" create -t $type $img 64M
  vsize=$(qemu_vsize $img)
  [ "$vsize" = "$(info_field $img virtual-size)" ] ||
    fail "$type: qemu-img says $vsize bytes, vhdimg info says $(info_field $img virtual-size)"
  [ "$(info_field $img type)" = $type ] || fail "$type: vhdimg info reports the wrong type"
  qio=()
  for ((i = 0; i < ${#writes[@]}; i += 3)); do
    qio+=(-c "write -q -P ${writes[i+2]} ${writes[i]} ${writes[i+1]}")
  done
  # The last sector of the disk too.
  qio+=(-c "write -q -P 0x77 $((vsize - 512)) 512")
  qemu-io -f vpc "${qio[@]}" $img
  make_raw $type.expected $vsize "${writes[@]}" $((vsize - 512)) 512 0x77

  qemu-img compare -q -f vpc -F raw $img $type.expected ||
    fail "$type: qemu does not read back what qemu-io wrote into a vhdimg-created image"
  "$VHDIMG" check $img || fail "$type: vhdimg check after qemu writes"
  "$VHDIMG" convert -O raw $img $type.vhdimg.raw
  qemu-img convert -f vpc -O raw $img $type.qemu.raw
  cmp $type.vhdimg.raw $type.qemu.raw || fail "$type: vhdimg convert and qemu-img convert differ"
  cmp $type.vhdimg.raw $type.expected || fail "$type: vhdimg convert differs from the expected content"
done

# Differencing: base (written by qemu) <- child <- grandchild (written by the engine).
base=dynamic.vhd
"$VHDIMG" create -b $base child.vhd
[ "$(info_field child.vhd type)" = differencing ] || fail "child is not differencing"
[ "$(info_field child.vhd virtual-size)" = "$vsize" ] || fail "child size differs from the parent's"
"$VHDIMG" convert -O raw child.vhd child.empty.raw
cmp child.empty.raw dynamic.expected || fail "an empty child does not read as its parent"

# Overwrite part of the parent's data, straddle a block boundary, write fresh space.
child_writes=(512K 1M 0x11  2044K 8K 0x22  20M 64K 0x33)
"$WRITE_HELPER" child.vhd "${child_writes[@]}"
make_raw child.expected $vsize "${writes[@]}" $((vsize - 512)) 512 0x77 "${child_writes[@]}"
"$VHDIMG" convert -O raw child.vhd child.raw
cmp child.raw child.expected || fail "chain of 2: flattened content differs from the expected"
"$VHDIMG" check child.vhd || fail "chain of 2: vhdimg check"

"$VHDIMG" create -t differencing -b child.vhd grandchild.vhd
gc_writes=(0 4K 0x44  1M 1M 0x55  63M 1M 0x66)
"$WRITE_HELPER" grandchild.vhd "${gc_writes[@]}"
make_raw grandchild.expected $vsize "${writes[@]}" $((vsize - 512)) 512 0x77 \
  "${child_writes[@]}" "${gc_writes[@]}"
"$VHDIMG" convert -O raw grandchild.vhd grandchild.raw
cmp grandchild.raw grandchild.expected || fail "chain of 3: flattened content differs"

# Flattened into images QEMU can read.
for fmt in dynamic fixed; do
  "$VHDIMG" convert -O $fmt grandchild.vhd flat-$fmt.vhd
  qemu-img compare -q -f vpc -F raw flat-$fmt.vhd grandchild.expected ||
    fail "chain of 3 converted to $fmt: qemu reads different content"
  [ "$(qemu_vsize flat-$fmt.vhd)" = "$vsize" ] || fail "convert -O $fmt changed the virtual size"
done
# The parents were left alone.
qemu-img compare -q -f vpc -F raw $base dynamic.expected || fail "writing children changed the base"
"$VHDIMG" convert -O raw child.vhd child.again.raw
cmp child.again.raw child.expected || fail "writing the grandchild changed the child"
