#!/bin/bash
# A rebase whose header write a crash tore between the header's two
# sectors, before the journal it wrote past the end of the file was cut off
# again: the child is read through the new parent (from the journal), by
# vhdimg and through vhdnbd, read-only with the torn header left as it is,
# writable with the header written back at startup; check --repair also
# writes it back and gives the journal's bytes back.  The same torn header
# without the journal is refused.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires qemu-io
cd "$TMPD"

M=$((1024 * 1024))
qemu-img create -q -f vpc -o subformat=dynamic base.vhd $((4 * M)) || fail "qemu-img create"
qemu-io -f vpc -c "write -P 0x41 0 1M" base.vhd >/dev/null || fail "qemu-io write"
# base2: the same content under another unique id.
"$VHDIMG" convert -O dynamic base.vhd base2.vhd >/dev/null || fail "vhdimg convert"
"$VHDIMG" create -b base.vhd child.vhd >/dev/null || fail "vhdimg create -b"
dd if=child.vhd of=old.hdr bs=512 skip=1 count=2 status=none
"$VHDIMG" rebase -u -b base2.vhd child.vhd >/dev/null || fail "vhdimg rebase -u"
dd if=child.vhd of=new.hdr bs=512 skip=1 count=2 status=none
cmp -s <(head -c 512 old.hdr) <(head -c 512 new.hdr) &&
  fail "the rebase did not change the header's first sector"
cmp -s <(tail -c 512 old.hdr) <(tail -c 512 new.hdr) &&
  fail "the rebase did not change the header's second sector"
size=$(stat -c %s child.vhd)
[ "$size" -gt 1536 ] || fail "child.vhd is $size bytes"
cp child.vhd done.vhd
qemu-img convert -f vpc -O raw base.vhd base.raw || fail "qemu-img convert"

# torn K: child.vhd as the crash left it, sector K of the header (0 or 1)
# new and the other old, the journal (new header, then the footer) at the end.
torn() {
  cp done.vhd child.vhd
  tail -c 512 done.vhd >foot
  cat new.hdr foot >>child.vhd
  if [ "$1" = 0 ]; then
    dd if=old.hdr of=child.vhd bs=512 skip=1 seek=2 count=1 conv=notrunc status=none
  else
    dd if=old.hdr of=child.vhd bs=512 seek=1 count=1 conv=notrunc status=none
  fi
  cmp -s <(dd if=child.vhd bs=512 skip=1 count=2 status=none) new.hdr &&
    fail "torn $1: the header is not torn"
  true
}
header_is_new() { cmp -s <(dd if=child.vhd bs=512 skip=1 count=2 status=none) new.hdr; }

for k in 0 1; do
  torn $k
  cp base.raw expect.raw
  sum=$(md5sum <child.vhd)
  rc=0
  "$VHDIMG" check child.vhd >check 2>&1 || rc=$?
  [ "$rc" -eq 3 ] || fail "torn $k: check exited $rc, not 3 (warnings): $(cat check)"
  grep -q "warning:.*cut short.*offset $size" check || fail "torn $k: check: $(cat check)"
  "$VHDIMG" info child.vhd >info 2>&1 || fail "torn $k: info: $(cat info)"
  grep -q "base2.vhd" info || fail "torn $k: info does not name the new parent: $(cat info)"

  # Read-only: served from the journal's header, the file untouched.
  start_vhdnbd "$TMPD/s" -r child.vhd 2>log
  qemu-img compare -q -f raw -F raw "nbd+unix:///?socket=$TMPD/s" expect.raw ||
    fail "torn $k: the read-only export reads otherwise"
  stop_vhdnbd
  grep -q "cut short.*reading the new header" log || fail "torn $k: no warning: $(cat log)"
  [ "$(md5sum <child.vhd)" = "$sum" ] || fail "torn $k: a read-only export changed the file"

  if [ $k = 0 ]; then
    # Writable: written back at startup, then written to.
    start_vhdnbd "$TMPD/s" child.vhd 2>log
    header_is_new || fail "torn $k: a writable export left the header torn"
    qemu-io -f raw -c "write -P 0x22 2M 64k" "nbd+unix:///?socket=$TMPD/s" >/dev/null ||
      fail "torn $k: qemu-io write through vhdnbd"
    stop_vhdnbd
    grep -q "cut short.*wrote back the new header" log || fail "torn $k: no warning: $(cat log)"
    printf '\x22%.0s' $(seq 65536) | dd of=expect.raw bs=64k seek=32 conv=notrunc status=none
    "$VHDIMG" check child.vhd >check 2>&1 || fail "torn $k: check after serving: $(cat check)"
  else
    "$VHDIMG" check --repair child.vhd >repair 2>&1 || true
    grep -q "repaired:.*wrote the dynamic header back" repair ||
      fail "torn $k: check --repair: $(cat repair)"
    header_is_new || fail "torn $k: check --repair left the header torn"
    [ "$(stat -c %s child.vhd)" -eq "$size" ] ||
      fail "torn $k: check --repair left $(stat -c %s child.vhd) bytes, not $size"
    "$VHDIMG" check child.vhd >check 2>&1 || fail "torn $k: check after --repair: $(cat check)"
  fi
  "$VHDIMG" convert -O raw child.vhd child.raw >/dev/null || fail "torn $k: vhdimg convert"
  cmp child.raw expect.raw || fail "torn $k: the child reads otherwise"
done

# Without the journal: refused, naming the checksum.
cp done.vhd child.vhd
dd if=old.hdr of=child.vhd bs=512 seek=1 count=1 conv=notrunc status=none
rc=0
"$VHDIMG" check child.vhd >check 2>&1 || rc=$?
[ "$rc" -ne 0 ] && grep -q "checksum" check || fail "a torn header alone: check $rc: $(cat check)"
if "$VHDNBD" --check-config -r child.vhd >log 2>&1; then
  fail "vhdnbd --check-config accepted a torn header without its journal: $(cat log)"
fi
grep -q "checksum" log || fail "vhdnbd --check-config does not name the checksum: $(cat log)"
echo "PASS: a header torn by a rewrite is read from its journal, written back, and refused without it"
