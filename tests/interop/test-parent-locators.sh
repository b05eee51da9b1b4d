#!/bin/bash
# Differencing children whose one parent locator is of a kind vhdimg never
# writes, the parent where only that locator finds it (not beside the child
# under the header's parent name):
#   MacX, a file URL: written as a URL ("%20" for a space, any host part) or,
#   as vhd-util writes it, with the path as it is;
#   Wi2r and Wi2k, the deprecated 8-bit relative and absolute Windows paths
#   of Virtual PC.
# Each finds the parent, and the child is served with the parent's data.  A
# parent found nowhere is refused with every place looked at named.
. "$top_srcdir/tests/functions.sh"
requires nbdcopy
helper=$top_builddir/vhd-write-helper

cat >"$TMPD/locator.py" <<'PY'
import struct, sys
child, code, data = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
with open(child, "r+b") as f:
    b = bytearray(f.read())
    hdr = struct.unpack_from(">Q", b, 16)[0]
    _, space, length, _, off = struct.unpack_from(">IIIIQ", b, hdr + 576)
    room = space if space >= length else space * 512
    assert len(data) <= room, (len(data), room)
    b[off:off + room] = data + bytes(room - len(data))
    for i in range(8):
        struct.pack_into(">IIIIQ", b, hdr + 576 + 24 * i, 0, 0, 0, 0, 0)
    struct.pack_into(">4sIIIQ", b, hdr + 576, code, space, len(data), 0, off)
    struct.pack_into(">I", b, hdr + 36, 0)
    struct.pack_into(">I", b, hdr + 36, ~sum(b[hdr:hdr + 1024]) & 0xFFFFFFFF)
    f.seek(0)
    f.write(b)
PY

n=0
# check_locator PARENT CODE DATA [FINAL]: a child in kids$n/ of PARENT (made
# there), its only locator CODE holding DATA; the parent then moved to FINAL.
check_locator() {
  local parent=$1 code=$2 data=$3 final=${4:-} child uuid
  n=$((n + 1))
  mkdir -p "$(dirname "$parent")" "$TMPD/kids$n"
  child=$TMPD/kids$n/child.vhd
  "$VHDIMG" create "$parent" 8M >/dev/null || fail "create $parent"
  "$helper" "$parent" 0 1M 0x61 || fail "writing $parent"
  "$VHDIMG" create -t differencing -b "$parent" "$child" >/dev/null || fail "create child"
  # The header's parent name must not find it beside the child.
  [ "$(basename "$parent")" != base.vhd ] || [ ! -e "$TMPD/kids$n/base.vhd" ] ||
    fail "test set-up: the parent is beside the child"
  "$PY3" "$TMPD/locator.py" "$child" "$code" "$data" || fail "rewriting the locator"
  if [ -n "$final" ]; then
    mv "$parent" "$final" || fail "mv $parent $final"
    parent=$final
  fi
  "$VHDIMG" info "$child" >"$TMPD/info" 2>&1 || fail "$code $data: parent not found: $(cat "$TMPD/info")"
  uuid=$("$VHDIMG" info "$parent" | sed -n 's/^uuid: //p')
  grep -qE "^  1: .*/$(basename "$parent") \(dynamic, uuid $uuid\)" "$TMPD/info" ||
    fail "$code $data: chain: $(cat "$TMPD/info")"
  start_vhdnbd "$TMPD/s$n" -r "$child"
  nbdcopy "nbd+unix:///?socket=$TMPD/s$n" "$TMPD/read.raw" || fail "nbdcopy from vhdnbd"
  stop_vhdnbd
  cmp -n 1048576 "$TMPD/read.raw" <(head -c 1048576 /dev/zero | tr '\0' '\141') ||
    fail "$code $data: the child does not show its parent's data"
}

d="$TMPD/vm disks"
e=${d// /%20}
check_locator "$d/base.vhd" MacX "file://localhost$e/base.vhd"
check_locator "$d.2/base.vhd" MacX "file://$e.2/base.vhd"
check_locator "$d.3/base.vhd" MacX "file://otherhost$e.3/base.vhd"
check_locator "$d.4/base.vhd" MacX "file://localhost$d.4/base.vhd"    # vhd-util: as it is
check_locator "$TMPD/x%41y/base.vhd" MacX "file://localhost$TMPD/x%41y/base.vhd" # '%' in a name
check_locator "$TMPD/é/base.vhd" MacX "file://localhost$TMPD/%C3%A9/base.vhd"     # UTF-8, escaped
# Wi2r: relative to the child's directory, Windows separators.
check_locator "$TMPD/vpc/base.vhd" Wi2r '..\vpc\base.vhd'
# Wi2k: absolute; on Linux its last component beside the child (the header's
# name says base.vhd, the parent is beside the child as disk1.vhd).
check_locator "$TMPD/wi2k/base.vhd" Wi2k 'C:\My Virtual Machines\disk1.vhd' \
  "$TMPD/kids$((n + 1))/disk1.vhd"

# Found nowhere: refused, naming the decoded and the written path.
mv "$d/base.vhd" "$TMPD/elsewhere.vhd"
rc=0
"$VHDIMG" info "$TMPD/kids1/child.vhd" >"$TMPD/info" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "a child whose parent is gone opened"
grep -qF "tried $d/base.vhd" "$TMPD/info" || fail "the error does not name $d/base.vhd: $(cat "$TMPD/info")"
grep -qF "$e/base.vhd" "$TMPD/info" || fail "the error does not name the URL's path: $(cat "$TMPD/info")"
# A place whose path is the start of one tried before it is named too.
"$PY3" "$TMPD/locator.py" "$TMPD/kids1/child.vhd" MacX "file://localhost$TMPD/kids1/base.vhd.bak" ||
  fail "rewriting the locator"
rc=0
"$VHDIMG" info "$TMPD/kids1/child.vhd" >"$TMPD/info" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "a child whose parent is gone opened"
grep -qF "tried $TMPD/kids1/base.vhd.bak" "$TMPD/info" || fail "the error: $(cat "$TMPD/info")"
grep -qE ", $TMPD/kids1/base\.vhd(,|\)|$)" "$TMPD/info" ||
  fail "the error does not name $TMPD/kids1/base.vhd (the header's name): $(cat "$TMPD/info")"
echo "PASS: $n children found their parents through MacX, Wi2r and Wi2k locators; a missing one names where it looked"
