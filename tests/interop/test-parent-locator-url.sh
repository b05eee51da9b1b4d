#!/bin/bash
# A differencing child whose only parent locator is a Mac one (MacX: a file
# URL), its parent in another directory than the child, so that the header's
# parent name beside the child does not find it.  The URL may be written as
# a URL ("%20" for a space, any host part) or, as vhd-util writes it, with
# the path as it is; each finds the parent, and the child is served with the
# parent's data.  A parent found nowhere is refused with every place looked
# at named.
. "$top_srcdir/tests/functions.sh"
requires nbdcopy
helper=$top_builddir/vhd-write-helper

cat >"$TMPD/macx.py" <<'PY'
import struct, sys
child, url = sys.argv[1], sys.argv[2].encode()
with open(child, "r+b") as f:
    b = bytearray(f.read())
    hdr = struct.unpack_from(">Q", b, 16)[0]
    code, space, length, _, off = struct.unpack_from(">IIIIQ", b, hdr + 576)
    room = space if space >= length else space * 512
    assert len(url) <= room, (len(url), room)
    b[off:off + room] = url + bytes(room - len(url))
    for i in range(8):
        struct.pack_into(">IIIIQ", b, hdr + 576 + 24 * i, 0, 0, 0, 0, 0)
    struct.pack_into(">IIIIQ", b, hdr + 576, 0x4D616358, space, len(url), 0, off)
    struct.pack_into(">I", b, hdr + 36, 0)
    struct.pack_into(">I", b, hdr + 36, ~sum(b[hdr:hdr + 1024]) & 0xFFFFFFFF)
    f.seek(0)
    f.write(b)
PY

n=0
check_url() { # PARENT-DIR URL-PREFIX ENCODED-DIR
  local pdir=$1 prefix=$2 enc=$3 child
  n=$((n + 1))
  mkdir -p "$pdir" "$TMPD/kids$n"
  child=$TMPD/kids$n/child.vhd
  "$VHDIMG" create "$pdir/base.vhd" 8M >/dev/null || fail "create $pdir/base.vhd"
  "$helper" "$pdir/base.vhd" 0 1M 0x61 || fail "writing $pdir/base.vhd"
  "$VHDIMG" create -t differencing -b "$pdir/base.vhd" "$child" >/dev/null || fail "create child"
  "$PY3" "$TMPD/macx.py" "$child" "$prefix$enc/base.vhd" || fail "rewriting the locator"
  "$VHDIMG" info "$child" >"$TMPD/info" 2>&1 ||
    fail "$prefix$enc/base.vhd: parent not found: $(cat "$TMPD/info")"
  grep -qF "$pdir/base.vhd" "$TMPD/info" || fail "$prefix$enc: chain: $(cat "$TMPD/info")"
  start_vhdnbd "$TMPD/s$n" -r "$child"
  nbdcopy "nbd+unix:///?socket=$TMPD/s$n" "$TMPD/read.raw" || fail "nbdcopy from vhdnbd"
  stop_vhdnbd
  cmp -n 1048576 "$TMPD/read.raw" <(head -c 1048576 /dev/zero | tr '\0' '\141') ||
    fail "$prefix$enc: the child does not show its parent's data"
}

d="$TMPD/vm disks"
check_url "$d" "file://localhost" "${d// /%20}"
check_url "$d.2" "file://" "${d// /%20}.2"
check_url "$d.3" "file://otherhost" "${d// /%20}.3"
check_url "$d.4" "file://localhost" "$d.4"              # vhd-util: as it is
check_url "$TMPD/x%41y" "file://localhost" "$TMPD/x%41y" # a '%' that is part of the name
check_url "$TMPD/é" "file://localhost" "$TMPD/%C3%A9"    # UTF-8, escaped

# Found nowhere: refused, naming the decoded and the written path.
mv "$d/base.vhd" "$TMPD/elsewhere.vhd"
rc=0
"$VHDIMG" info "$TMPD/kids1/child.vhd" >"$TMPD/info" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "a child whose parent is gone opened"
grep -qF "tried $d/base.vhd" "$TMPD/info" || fail "the error does not name $d/base.vhd: $(cat "$TMPD/info")"
grep -qF "${d// /%20}/base.vhd" "$TMPD/info" || fail "the error does not name the URL's path: $(cat "$TMPD/info")"
echo "PASS: $n MacX locators found their parents; a missing one names where it looked"
