#!/bin/bash
# vhdimg on an image that vhdnbd is serving: info, map and convert work
# (they open without the lock) and see data a client wrote and flushed;
# convert refuses to rename its output over a served image or parent;
# check --repair and writers are refused by the lock instead of racing it;
# a DST served since the convert began is refused too, and a write-only
# DST is replaced.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires qemu-io
[ -x "$VHDNBD" ] || { echo "SKIP: $VHDNBD was not built" >&2; exit 77; }
requires_write_helper
cd "$TMPD"

"$VHDIMG" create served.vhd 16M
vsize=$(info_field served.vhd virtual-size)
start_vhdnbd "$TMPD/nbd.sock" served.vhd
uri="nbd+unix:///?socket=$TMPD/nbd.sock"

# qemu-io flushes before it disconnects.
qemu-io -f raw -c 'write -q -P 0xab 0 1M' -c 'write -q -P 0xcd 9M 64K' "$uri"
make_raw expected.raw $vsize 0 1M 0xab 9M 64K 0xcd

"$VHDIMG" info served.vhd >info.out || fail "info of a served image"
grep -q '^allocated blocks: 2 of' info.out || { cat info.out >&2; fail "info does not see the flushed blocks"; }
"$VHDIMG" map --json served.vhd | "$PY3" -c '
import json, sys
data = [(e["start"], e["length"]) for e in json.load(sys.stdin) if e["data"]]
assert data and data[0][0] == 0 and any(s <= 9 << 20 < s + l for s, l in data), data
' || fail "map of a served image"
"$VHDIMG" convert served.vhd served.raw || fail "convert of a served image"
cmp served.raw expected.raw || fail "convert of a served image: content differs"
"$VHDIMG" check served.vhd >check.out || { cat check.out >&2; fail "check (read-only) of a served image"; }

rc=0
"$VHDIMG" check --repair served.vhd >check.out 2>&1 || rc=$?
[ $rc -eq 2 ] || { cat check.out >&2; fail "check --repair of a served image: exit $rc, expected 2"; }
grep -qi lock check.out || { cat check.out >&2; fail "check --repair does not say the image is locked"; }
"$WRITE_HELPER" served.vhd 0 4K 0x01 2>err.out && fail "a second writer got the served image"
grep -qi lock err.out || { cat err.out >&2; fail "the second writer was not refused by the lock"; }

# convert never renames its output over a served image: the server would
# go on with the old file, unlinked, and lose every write it acknowledged.
# Nor over one reached through a symbolic link, nor over the parent a
# served child reads.  (Over a file nobody uses it renames as before:
# test-vhdimg-convert.sh.)
"$VHDIMG" create other.vhd 16M
ln -s served.vhd link.vhd
sum=$(sha256sum <served.vhd)
for dst in served.vhd link.vhd; do
  rc=0
  "$VHDIMG" convert -O dynamic other.vhd $dst >conv.out 2>&1 || rc=$?
  [ $rc -eq 1 ] || { cat conv.out >&2; fail "convert over served $dst: exit $rc, expected 1"; }
  grep -q "served.vhd: image is locked by process $VHDNBD_PID" conv.out ||
    { cat conv.out >&2; fail "convert over served $dst does not name the lock's holder"; }
done
[ "$(sha256sum <served.vhd)" = "$sum" ] || fail "a refused convert changed the served image"
[ -L link.vhd ] || fail "a refused convert replaced the symbolic link"
ls -a | grep -q '^\.served' && fail "a refused convert left a temporary file: $(ls -a)"
qemu-io -f raw -c 'write -q -P 0x5e 2M 4K' "$uri"
qemu-io -f raw -c 'read -q -P 0x5e 2M 4K' -c 'read -q -P 0xab 0 1M' "$uri" ||
  fail "the served image lost data to a refused convert"

"$VHDIMG" create base.vhd 16M
"$VHDIMG" create -b base.vhd child.vhd
first_pid=$VHDNBD_PID
start_vhdnbd "$TMPD/child.sock" child.vhd
rc=0
"$VHDIMG" convert -O dynamic other.vhd base.vhd >conv.out 2>&1 || rc=$?
[ $rc -eq 1 ] || { cat conv.out >&2; fail "convert over a served child's parent: exit $rc, expected 1"; }
grep -q "base.vhd: image is locked by process $VHDNBD_PID" conv.out ||
  { cat conv.out >&2; fail "convert over a served child's parent does not name the lock's holder"; }
stop_vhdnbd
VHDNBD_PID=$first_pid

# A DST that is not there when convert starts, but served when it is
# about to rename (a server started on a file put there meanwhile): the
# rename would take the server's file from under it.  Every sync of the
# convert is held up by strace, so the image and its server are in place
# well before the rename.
if command -v strace >/dev/null && strace -f -o /dev/null -e inject=fdatasync:delay_exit=1 true 2>/dev/null; then
  rc=0
  # LeakSanitizer cannot run under ptrace: leaks are not looked for there.
  ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
    strace -f -o /dev/null -e trace=fsync,fdatasync -e inject=fsync,fdatasync:delay_exit=2000000 \
    "$VHDIMG" convert -O dynamic other.vhd late.vhd >conv.out 2>&1 &
  conv_pid=$!
  for _ in $(seq 600); do
    ls -a | grep -q '^\.late\.vhd\.' && break
    kill -0 $conv_pid 2>/dev/null || break
    sleep 0.05
  done
  ls -a | grep -q '^\.late\.vhd\.' ||
    { cat conv.out >&2; fail "convert into late.vhd made no temporary file in 30 s"; }
  "$VHDIMG" create late.vhd 16M
  second_pid=$VHDNBD_PID
  start_vhdnbd "$TMPD/late.sock" late.vhd
  qemu-io -f raw -c 'write -q -P 0x6c 0 64K' "nbd+unix:///?socket=$TMPD/late.sock"
  wait $conv_pid || rc=$?
  [ $rc -eq 1 ] || { cat conv.out >&2; fail "convert over an image served since it began: exit $rc, expected 1"; }
  grep -q "late.vhd: image is locked by process $VHDNBD_PID" conv.out ||
    { cat conv.out >&2; fail "convert over an image served since it began does not name the lock's holder"; }
  qemu-io -f raw -c 'write -q -P 0x6d 64K 4K' -c 'read -q -P 0x6c 0 64K' "nbd+unix:///?socket=$TMPD/late.sock" ||
    fail "the image served since the convert began lost data"
  stop_vhdnbd
  "$VHDIMG" convert -O raw late.vhd late.raw >/dev/null || fail "reading late.vhd"
  make_raw late.exp "$(info_field late.vhd virtual-size)" 0 64K 0x6c 64K 4K 0x6d
  cmp late.raw late.exp || fail "late.vhd is not the served image after the refused convert"
  VHDNBD_PID=$second_pid
else
  echo "strace cannot delay system calls here: the rename's second look is not tested" >&2
fi

# A DST its owner may replace but not read (mode 0200): its lock is taken
# through a descriptor open for writing, and the convert goes ahead.
if [ "$(id -u)" = 0 ]; then
  as_user() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
  chmod 711 "$TMPD" # the user reaches wo/ through it
else
  as_user() { "$@"; }
fi
mkdir -m 1777 wo
cp other.vhd wo/src.vhd && chmod 644 wo/src.vhd
if as_user test -x "$VHDIMG" && as_user sh -c 'echo old >wo/dst.raw && chmod 200 wo/dst.raw'; then
  as_user "$VHDIMG" convert -O raw wo/src.vhd wo/dst.raw >conv.out 2>&1 ||
    { cat conv.out >&2; fail "convert over a write-only DST"; }
  [ "$(stat -c %s wo/dst.raw)" = "$(info_field other.vhd virtual-size)" ] || fail "the write-only DST was not replaced"
else
  echo "no unprivileged user can run $VHDIMG here: the write-only DST is not tested" >&2
fi
echo "PASS: vhdimg on a served image"
