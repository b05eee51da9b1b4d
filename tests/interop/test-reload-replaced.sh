#!/bin/bash
# An export whose image (or a parent of it) was replaced on disk since it
# was opened (a backup restored by copy and rename) is opened again by a
# reload whose configuration did not change: served on, its writes would
# go to the unlinked file, acknowledged, flushed and lost at the server's
# exit, and the new file would carry no lock.  The reload logs which file
# changed; afterwards the export serves the new file, and a write flushed
# to it is in that file once the server has stopped.
. "$top_srcdir/tests/functions.sh"
requires_py nbd
requires nbdinfo
cd "$TMPD"
"$VHDIMG" create rw.vhd 16M >/dev/null || fail "create rw"
"$VHDIMG" create base.vhd 16M >/dev/null || fail "create base"
"$VHDIMG" create -b base.vhd child.vhd >/dev/null || fail "create child"
cat >vhdnbd.conf <<EOF
[export rw]
image = $TMPD/rw.vhd
[export child]
image = $TMPD/child.vhd
EOF
log=$TMPD/vhdnbd.log
start_vhdnbd "$TMPD/sock" -v -C "$TMPD/vhdnbd.conf" 2>"$log"

cat >replaced.py <<'PY'
import os, shutil, subprocess, sys
sys.path.insert(0, os.path.join(os.environ["top_srcdir"], "tests", "interop"))
from reload_server import ReloadServer
sock, conf, log, pid, vhdimg = sys.argv[1:6]
srv = ReloadServer(sock, conf, log, int(pid))

# The old rw.vhd gets 0x11 through the server; the new one, written
# offline, 0x22.
h = srv.connect("rw")
h.pwrite(b"\x11" * 4096, 0)
h.flush()
h.shutdown()
shutil.copy("rw.vhd", "rw.new")
subprocess.run([os.environ["WRITE_HELPER"], "rw.new", "0", "4096", "0x22"], check=True)
os.rename("rw.new", "rw.vhd")
# The child's parent replaced by a copy of itself (same unique id): the
# chain must be opened again over the new file.
shutil.copy("base.vhd", "base.new")
os.rename("base.new", "base.vhd")

at = srv.reload(open(conf).read())
srv.wait_log("applied", at)
srv.wait_log("export 'rw': %s/rw.vhd is not the file opened as it any more (replaced)"
             % os.getcwd(), at)
srv.wait_log("export 'child': " , at)
srv.wait_log("base.vhd is not the file opened as it any more (replaced)", at)
h = srv.connect("rw")
assert h.pread(4096, 0) == b"\x22" * 4096, "after the reload rw serves the old file"
h.pwrite(b"\x33" * 4096, 8192)
h.flush()
h.shutdown()
h = srv.connect("child")
h.pwrite(b"\x44" * 512, 0)
h.flush()
h.shutdown()
# The new files are what the server holds now: locked by it.
for f in ("rw.vhd", "base.vhd"):
    st = os.stat(f)
    dev = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    assert any(dev in l for l in open("/proc/locks")), "%s: the server holds no lock on it" % f
print("ok")
PY
WRITE_HELPER=$top_builddir/vhd-write-helper top_srcdir=$top_srcdir \
  "$PY3" replaced.py "$TMPD/sock" "$TMPD/vhdnbd.conf" "$log" "$VHDNBD_PID" "$VHDIMG" ||
  fail "reload of replaced images: $(tail -30 "$log")"
stop_vhdnbd
"$VHDIMG" convert -O raw rw.vhd rw.raw >/dev/null || fail "cannot read rw.vhd"
"$PY3" - <<'PY' || fail "the write flushed after the reload is not in the new rw.vhd"
d = open("rw.raw", "rb").read(12288)
assert d[:4096] == b"\x22" * 4096 and d[8192:12288] == b"\x33" * 4096, d[:16]
PY
! grep -q "AddressSanitizer\|runtime error\|LeakSanitizer" "$log" ||
  fail "sanitizer report: $(cat "$log")"
echo "ok: replaced images reopened by a reload"
