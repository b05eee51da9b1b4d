#!/bin/bash
# Images created by vhdimg and written by the engine, read back by libvhdi
# (pyvhdi), the reference reader: fixed, dynamic (two block sizes) and a
# differencing chain of 3.  The fixed and dynamic images take single-sector
# and odd-sector writes, so that bitmap bytes end up partly set and libvhdi
# checks the bit order inside them (the first sector is the most significant
# bit).  In the chain, partly set bytes stay where the parent reads zeros:
# Debian 12's libvhdi takes every sector from the first set bit to the end of
# such a byte from the child, so over non-zero parent data it is no oracle.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires_py pyvhdi
requires_write_helper
cd "$TMPD"
dump="$PY3 $top_srcdir/tests/interop/pyvhdi-dump.py"

# json_get JSONLINE KEY
json_get() { "$PY3" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# check_level JSONLINE IMAGE TYPE: libvhdi's view of one level agrees with vhdimg info.
check_level() {
  local line=$1 img=$2 type=$3
  [ "$(json_get "$line" media-size)" = "$(info_field $img virtual-size)" ] ||
    fail "$img: libvhdi media size $(json_get "$line" media-size) != vhdimg virtual size $(info_field $img virtual-size)"
  [ "$(json_get "$line" disk-type)" = $type ] ||
    fail "$img: libvhdi disk type $(json_get "$line" disk-type), expected $type"
  [ "$(json_get "$line" identifier)" = "$(info_field $img uuid)" ] ||
    fail "$img: libvhdi identifier $(json_get "$line" identifier) != vhdimg uuid $(info_field $img uuid)"
}

# Aligned runs, then: sector 1 alone, sector 15 alone (the last bit of the
# second bitmap byte), sectors 2051-2053 (inside a byte, 1 MiB in), and runs
# that cross a 64 KiB and a 2 MiB block boundary at odd sectors.
writes=(0 4K 0xab  1020K 8K 0xcd  3M 1M 0x5a  12M 4K 0x01
        512 512 0x11  7680 512 0x12  1049088 1536 0x13
        130560 1536 0x14  4193792 2560 0x15)

for spec in "fixed" "dynamic" "dynamic --block-size 64K"; do
  set -- $spec
  type=$1
  shift
  name=$type$#
  "$VHDIMG" create -t $type "$@" $name.vhd 16M
  vsize=$(info_field $name.vhd virtual-size)
  "$WRITE_HELPER" $name.vhd "${writes[@]}" $((vsize - 4096)) 4K 0xee
  make_raw $name.expected $vsize "${writes[@]}" $((vsize - 4096)) 4K 0xee
  out=$($dump $name.pyvhdi $name.vhd) || fail "$name: libvhdi cannot read a vhdimg image"
  check_level "$out" $name.vhd $([ $type = fixed ] && echo 2 || echo 3)
  cmp $name.pyvhdi $name.expected || fail "$spec: libvhdi reads different content"
done

# Differencing chain: base <- child <- grandchild.
"$VHDIMG" create base.vhd 16M
"$WRITE_HELPER" base.vhd 0 8M 0x10
"$VHDIMG" create -b base.vhd child.vhd
# Sectors 24579 and 24581 (12 MiB + 1.5 KiB and + 2.5 KiB): over zeros in base.
"$WRITE_HELPER" child.vhd 1M 4K 0x20  2044K 8K 0x21  10M 2M 0x22 \
  12584448 512 0x23  12585472 512 0x24
"$VHDIMG" create -b child.vhd grandchild.vhd
"$WRITE_HELPER" grandchild.vhd 0 4K 0x30  1M 1M 0x31  15M 1M 0x32
make_raw chain.expected $(info_field base.vhd virtual-size) 0 8M 0x10 \
  1M 4K 0x20  2044K 8K 0x21  10M 2M 0x22  12584448 512 0x23  12585472 512 0x24 \
  0 4K 0x30  1M 1M 0x31  15M 1M 0x32

out=$($dump grandchild.pyvhdi grandchild.vhd child.vhd base.vhd) ||
  fail "libvhdi cannot read the vhdimg differencing chain"
mapfile -t levels <<<"$out"
check_level "${levels[0]}" grandchild.vhd 4
check_level "${levels[1]}" child.vhd 4
check_level "${levels[2]}" base.vhd 3
[ "$(json_get "${levels[0]}" parent-identifier)" = "$(info_field child.vhd uuid)" ] ||
  fail "grandchild's parent identifier (as libvhdi reads it) is not child's UUID"
[ "$(json_get "${levels[1]}" parent-identifier)" = "$(info_field base.vhd uuid)" ] ||
  fail "child's parent identifier (as libvhdi reads it) is not base's UUID"
case "$(json_get "${levels[0]}" parent-filename)" in
  *child.vhd) ;;
  *) fail "grandchild's parent name is '$(json_get "${levels[0]}" parent-filename)'" ;;
esac
cmp grandchild.pyvhdi chain.expected || fail "libvhdi reads different content from the chain"

# libvhdi and vhdimg agree on the flattened chain.
"$VHDIMG" convert grandchild.vhd grandchild.raw
cmp grandchild.raw chain.expected || fail "vhdimg convert of the chain differs"
