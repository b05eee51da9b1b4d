#!/bin/bash
# Blocks under 4 KiB: vhdimg create and convert --block-size warn that QEMU
# and libvhdi cannot read such images, naming them, and only then; and the
# readers still behave as the warning says (QEMU reads wrong data without
# an error, libvhdi refuses), while they read 4 KiB blocks right.  vhdimg
# itself reads every size.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires_write_helper
cd "$TMPD"

make_raw src.raw 1M 0 4K 0x11 300K 1536 0x22 1020K 4K 0x33
for bs in 512 1024 2048 4096; do
  rm -f c.vhd d.vhd
  "$VHDIMG" create --block-size $bs c.vhd 1M 2>create.err || fail "create --block-size $bs"
  "$VHDIMG" convert -f raw -O dynamic --exact --block-size $bs src.raw d.vhd 2>convert.err ||
    fail "convert --block-size $bs"
  for e in create.err convert.err; do
    if [ $bs -lt 4096 ]; then
      grep -q "^vhdimg: warning: .*$bs bytes.*QEMU.*libvhdi" $e ||
        { cat $e >&2; fail "$e: no warning naming QEMU and libvhdi for $bs-byte blocks"; }
    else
      [ ! -s $e ] || { cat $e >&2; fail "$e: a warning for $bs-byte blocks"; }
    fi
  done
  "$VHDIMG" convert d.vhd d.raw && cmp d.raw src.raw || fail "vhdimg reads $bs-byte blocks wrong"
  rm -f d.raw
  # What the warning says of the readers.
  if command -v qemu-img >/dev/null; then
    qemu-img convert -f vpc -O raw d.vhd q.raw 2>/dev/null && cmp -s q.raw src.raw && q=right || q=wrong
    [ $bs -lt 4096 ] && [ $q = right ] && fail "QEMU now reads $bs-byte blocks: update the warning"
    [ $bs -ge 4096 ] && [ $q = wrong ] && fail "QEMU cannot read $bs-byte blocks"
    rm -f q.raw
  else
    echo "PARTIAL: qemu-img is not installed: what the warning says of QEMU is not checked"
  fi
  if "$PY3" -c 'import pyvhdi' 2>/dev/null; then
    "$PY3" "$top_srcdir/tests/interop/pyvhdi-dump.py" p.raw d.vhd >/dev/null 2>&1 && cmp -s p.raw src.raw && p=right || p=wrong
    [ $bs -lt 4096 ] && [ $p = right ] && fail "libvhdi now reads $bs-byte blocks: update the warning"
    [ $bs -ge 4096 ] && [ $p = wrong ] && fail "libvhdi cannot read $bs-byte blocks"
    rm -f p.raw
  else
    echo "PARTIAL: python module pyvhdi is not available: what the warning says of libvhdi is not checked"
  fi
done
exit 0
