#!/bin/bash
# A persistent overlay child over an image that changed, and a child whose
# last flush fails:
#   - each persistent child gets a record of its image (CHILD.base: size
#     and modification time); written into since (the unique id stays the
#     same, so the child's header cannot tell), the image no longer fits
#     the child: the client is refused, the reason logged, nothing written;
#   - a child without a record (an older vhdnbd's) is taken as it is and
#     gets one;
#   - over an image that is a differencing child, the record covers every
#     parent: a parent or grandparent changed is refused like the image;
#     a record of the image alone (older vhdnbd) that fits is completed;
#   - a refused client is answered NBD_REP_ERR_POLICY, with a message that
#     says the export exists and why its overlay cannot be opened (not
#     NBD_REP_ERR_UNKNOWN, "no such export"), and a log line names it;
#   - a new child's directory is synced after the child is renamed into
#     place (strace), so that a flushed write cannot lose its file, and so
#     is a completed record's;
#   - when a persistent child's final flush fails (every write failing from
#     some point on, VHDNBD_FAULT_AFTER), vhdnbd exits 1 on SIGTERM.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires_py nbd
cd "$TMPD"
img=$TMPD/base.vhd ov=$TMPD/ov log=$TMPD/log
"$VHDIMG" create "$img" 64M >/dev/null
"$WRITE_HELPER" "$img" 0 64K 0x11 || fail "writing the image"

# client ACTION [TEXT]: over TCP to export p; write: 0xcc at 0 and flush;
# expect: 0xcc at 0; refused: the connection must fail with
# NBD_REP_ERR_POLICY (not "no such export") and a message from the server
# that holds TEXT.
client() {
  "$PY3" - "$VHDNBD_PORT" "$@" <<'PYEOF'
import sys, nbd
port, action = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.set_export_name("p")
# libnbd passes the server's error message to its debug output alone.
said = []
h.set_debug(True)
h.set_debug_callback(lambda ctx, msg: said.append(msg))
try:
    h.connect_tcp("127.0.0.1", port)
except nbd.Error as e:
    if action == "refused":
        assert "policy" in (e.string or ""), "refused, but not by policy: %s" % e.string
        msg = [m for m in said if "server error message" in m]
        assert msg and sys.argv[3] in msg[0], "the server's message is %r, without %r" % (
            msg, sys.argv[3])
        sys.exit(0)
    sys.exit("connect: %s" % e)
h.set_debug(False)
if action == "refused":
    sys.exit("connected, but should have been refused")
if action == "write":
    h.pwrite(b"\xcc" * 65536, 0)
    h.flush()
elif action == "expect":
    assert h.pread(65536, 0) == b"\xcc" * 65536, "the child's data is gone"
    assert h.pread(4096, 65536) == bytes(4096), "unexpected data past the child's"
elif action == "fill":             # 1 MiB writes until one fails
    for i in range(256):
        try:
            h.pwrite(b"\x5a" * (1 << 20), i << 20)
        except nbd.Error:
            print(i)
            break
    else:
        sys.exit("no write failed")
h.shutdown()
PYEOF
}
unopened="export 'p' exists, but this client's overlay of it cannot be opened"
stale="$unopened: the export's image changed"
serve() { start_vhdnbd_tcp "$TMPD/sock" -e "p=$img,overlay=persistent,overlay-key=address,overlay-dir=$ov" "$@" 2>>"$log"; }

serve
client write || fail "the first client's write"
stop_vhdnbd
child=$(ls "$ov"/p-*.vhd) || fail "no persistent child in $ov"
[ -s "$child.base" ] || fail "no record of the image beside $child"
serve
client expect || fail "the child was not reopened with its data"
stop_vhdnbd

# A child made before records existed: taken as it is, and recorded.
rm "$child.base"
serve
client expect || fail "a child without a record was refused"
stop_vhdnbd
[ -s "$child.base" ] || fail "the child without a record got none"

# The image written into: the child is refused, nothing changes.
"$WRITE_HELPER" "$img" 4096 4K 0x22 || fail "writing the image again"
cp "$child" child.before
sum=$(sha256sum <"$img")
serve
client refused "$stale" || fail "a child over a changed image was served"
stop_vhdnbd
grep -q "changed since this child was made" "$log" || fail "no log line for the refused child"
grep -q "client 127\.0\.0\.1:[0-9]*: NBD_OPT_GO: export 'p' refused: its overlay for this client" \
  "$log" || fail "no log line naming the refused client"
cmp -s "$child" child.before || fail "the refused child was written"
[ "$(sha256sum <"$img")" = "$sum" ] || fail "the image was written"

# synced_after_rename ACTION WHAT NEW: serves, runs client ACTION under
# strace, and requires a rename of $ov/NEW.new to $ov/NEW (a regular
# expression) followed by a sync of $ov, so that the new name survives a
# crash.  Without strace it says so and returns 1.
synced_after_rename() {
  command -v strace >/dev/null 2>&1 || {
    echo "PARTIAL: strace is not installed: the directory sync of $2 is not checked"
    return 1
  }
  serve
  strace -f -qq -p "$VHDNBD_PID" -o "$TMPD/trace" -e trace=rename,renameat,renameat2,openat,fsync,fdatasync &
  local st=$!
  sleep 1
  client "$1" || fail "the traced client ($1)"
  kill "$st"
  wait "$st" 2>/dev/null || true
  stop_vhdnbd
  "$PY3" - "$TMPD/trace" "$ov" "$3" <<'PYEOF' || fail "$2: its directory was not synced after the rename"
import re, sys
lines = open(sys.argv[1]).read().splitlines()
ov, name = sys.argv[2], sys.argv[3]
d = re.escape(ov)
renamed = next((i for i, l in enumerate(lines)
                if re.search(r'rename\w*\(.*"%s/%s\.new".*"%s/%s"' % (d, name, d, name), l)), None)
if renamed is None:
    sys.exit("no rename of %s into place in the trace" % name)
fds = set()
for l in lines[renamed:]:
    m = re.search(r'openat\(AT_FDCWD, "%s", [^)]*O_DIRECTORY[^)]*\)\s+=\s+(\d+)' % d, l)
    if m:
        fds.add(m.group(1))
    m = re.search(r'f(?:data)?sync\((\d+)\)\s+=\s+0', l)
    if m and m.group(1) in fds:
        sys.exit(0)
sys.exit("no sync of %s after the rename" % ov)
PYEOF
}

# A new child's name is durable before its first flush is acknowledged: its
# directory is synced after the rename (seen with strace, where installed).
rm -rf "$ov"
synced_after_rename write "a new child" 'p-[^"]*\.vhd' || true

# An image that is itself a differencing child: the record covers its
# parents too, for a write into one of them changes what the image reads.
rm -rf "$ov"
gp=$TMPD/chain-gp.vhd par=$TMPD/chain-par.vhd top=$TMPD/chain-top.vhd
"$VHDIMG" create "$gp" 64M >/dev/null || fail "creating $gp"
"$VHDIMG" create -b "$gp" "$par" >/dev/null || fail "creating $par"
"$VHDIMG" create -b "$par" "$top" >/dev/null || fail "creating $top"
plain_img=$img img=$top
serve
client write || fail "the write through a child of a chain"
stop_vhdnbd
child=$(ls "$ov"/p-*.vhd) || fail "no persistent child of the chain in $ov"
[ "$(grep -c '^parent [12] ' "$child.base")" -eq 4 ] ||
  fail "the record does not cover both parents: $(cat "$child.base")"
# A record of an older vhdnbd (the image's lines alone) that fits the image:
# the child is taken, and its record completed with the parents.
head -n 3 "$child.base" >old.base
cp old.base "$child.base"
# (Its rewrite is durable: the directory is synced after the rename.)
if ! synced_after_rename expect "a completed record" 'p-[^"]*\.vhd\.base'; then
  serve
  client expect || fail "a child with an older record that fits its image was refused"
  stop_vhdnbd
fi
grep -q '^parent 2 mtime ' "$child.base" ||
  fail "the older record was not completed: $(cat "$child.base")"
# The parent's modification time changed: refused, naming the parent.
touch -d '2001-02-03 04:05:06' "$par"
serve
client refused "$stale" || fail "a child over an image whose parent changed was served"
stop_vhdnbd
grep -q "$par, a parent of the image $top, changed since this child was made" "$log" ||
  fail "no log line naming the changed parent"
# Started over, then the grandparent written into: refused, naming it.
rm -f "$child" "$child.base"
serve
client write || fail "the write through a new child of the chain"
stop_vhdnbd
"$WRITE_HELPER" "$gp" 1M 4K 0x33 || fail "writing the grandparent"
serve
client refused "$stale" || fail "a child over an image whose grandparent was written was served"
stop_vhdnbd
grep -q "$gp, a parent of the image $top, changed since this child was made" "$log" ||
  fail "no log line naming the changed grandparent"
img=$plain_img

# A child that cannot be made (its directory's path runs through a file):
# the client is told the export exists but its overlay cannot be opened.
: >"$TMPD/not-a-dir"
saved_ov=$ov ov=$TMPD/not-a-dir/ov
serve
client refused "$unopened: Not a directory" ||
  fail "a client whose overlay cannot be made was not told why"
stop_vhdnbd
grep -q "overlay directory $ov: Not a directory" "$log" || fail "no log line for the directory"
ov=$saved_ov

# A persistent child whose final flush fails: exit status 1.
rm -rf "$ov"
export VHDNBD_FAULT_AFTER=60
serve
unset VHDNBD_FAULT_AFTER
n=$(client fill) || fail "the filling client"
[ "$n" -gt 0 ] || fail "no write succeeded before the fault"
kill "$VHDNBD_PID"
rc=0
wait "$VHDNBD_PID" || rc=$?
[ "$rc" -eq 1 ] || fail "vhdnbd exited $rc, not 1, after a persistent child's final flush failed"
grep -q "closing overlay" "$log" || fail "no log line for the failed close"
echo "ok: a changed image's child is refused; a failed final flush exits 1"
