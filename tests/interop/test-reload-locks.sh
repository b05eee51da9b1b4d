#!/bin/bash
# A reload that changes an export opens it again only once its old
# instance has closed, too late to refuse the reload if that open then
# fails (the export would be gone).  So the locks the new instance will
# need are counted before anything closes, including those the old
# instance's own lock hides:
#   another export that stays reads the same image, and the changed export
#   is to be written: refused;
#   another server reads the image read-only: refused, and applied once it
#   has gone;
#   two exports changed by the same reload would both write one image:
#   refused;
#   an export serving a base read-write is replaced by one serving a new
#   child of it (a snapshot): the new one waits for the old to close, and
#   is served.
# Each refused reload leaves every export serving as before.
. "$top_srcdir/tests/functions.sh"
requires nbdinfo
requires_py nbd
[ -r /proc/locks ] || skip "no /proc/locks to count locks in"

for n in shared other both base; do
  "$VHDIMG" create "$TMPD/$n.vhd" 16M >/dev/null
done
"$VHDIMG" create -b "$TMPD/base.vhd" "$TMPD/snap.vhd" >/dev/null
cat >"$TMPD/reload.py" <<'PY'
import os, signal, sys, time, nbd
sys.path.insert(0, os.path.join(os.environ["top_srcdir"], "tests", "interop"))
from reload_server import ReloadServer
# --config TMPD prints the configuration the server starts with.
if sys.argv[1] == "--config":
    tmpd = sys.argv[2]
else:
    sock, conf, log, pid, tmpd, other_pid = sys.argv[1:7]

def listed():
    return set(srv.listed())

def serving(name, readonly):
    h = connect(name)
    assert h.is_read_only() == readonly, (name, h.is_read_only())
    assert h.pread(4096, 0) == b"\0" * 4096, name
    h.shutdown()

ALL = {"keep", "change", "solo", "pair", "base"}
RO = "read-only = true\n"
def config(change="", solo="", pair="", extra="", base="[export base]\nimage = %(t)s/base.vhd\n"):
    return ("[export keep]\nimage = %(t)s/shared.vhd\n" + RO +
            "[export change]\nimage = %(t)s/shared.vhd\n" + (change or RO) +
            "[export solo]\nimage = %(t)s/other.vhd\n" + (solo or RO) +
            "[export pair]\nimage = %(t)s/both.vhd\n" + (pair or RO) + base + extra) % {"t": tmpd}

if sys.argv[1] == "--config":
    sys.stdout.write(config())
    sys.exit(0)
pid, other_pid = int(pid), int(other_pid)
srv = ReloadServer(sock, conf, log, pid)
connect, wait_log, reload = srv.connect, srv.wait_log, srv.reload

def refused(text, name, why):
    at = reload(text)
    wait_log("refused", at)
    wait_log("export '%s': " % name, at)
    wait_log(why, at)
    assert listed() == ALL, "a refused reload changed the exports: %s" % listed()
    for n in ALL:
        serving(n, n != "base")

held = connect("change")
# An export that stays (keep) reads shared.vhd: change cannot write it.
refused(config(change="read-only = false\n"), "change",
        "shared.vhd: image is locked (any lock)")
assert held.pread(512, 0) == b"\0" * 512
# Another server reads other.vhd: solo cannot write it while it does.
refused(config(solo="read-only = false\n"), "solo", "other.vhd: image is locked (any lock)")
# Two exports changed in one reload, both to write both.vhd.
refused(config(pair="read-only = false\n",
               extra="[export twin]\nimage = %s/./both.vhd\nread-only = false\n" % tmpd),
        "twin", "both.vhd: image is locked (any lock)")

# Once the other server has gone, solo becomes writable.
os.kill(other_pid, signal.SIGTERM)
end = time.monotonic() + 60
while time.monotonic() < end and os.path.exists("/proc/%d" % other_pid) and \
        open("/proc/%d/stat" % other_pid).read().split()[2] != "Z":
    time.sleep(0.1)
at = reload(config(solo="read-only = false\n"))
wait_log("applied", at)
wait_log("reload: export 'solo' added", at)
h = connect("solo")
assert not h.is_read_only()
h.pwrite(b"\x5a" * 4096, 0)
h.flush()
assert h.pread(4096, 0) == b"\x5a" * 4096
h.shutdown()
held.shutdown()

# The base, served read-write, is replaced by a child of it: the child's
# open needs the base, which the old export locks until it has closed.
h = connect("base")
h.pwrite(b"\xba" * 8192, 0)
h.flush()
h.shutdown()
at = reload(config(solo="read-only = false\n",
                   base="[export snap]\nimage = %(t)s/snap.vhd\n"))
wait_log("applied", at)
wait_log("reload: export 'snap' added", at)
h = connect("snap")
assert not h.is_read_only()
assert h.pread(8192, 0) == b"\xba" * 8192, "the child does not read its base"
h.pwrite(b"\x5c" * 4096, 4096)
h.flush()
assert h.pread(8192, 0) == b"\xba" * 4096 + b"\x5c" * 4096
h.shutdown()
print("ok")
PY

conf=$TMPD/vhdnbd.conf
top_srcdir=$top_srcdir "$PY3" "$TMPD/reload.py" --config "$TMPD" >"$conf" || fail "reload.py --config"
log=$TMPD/vhdnbd.log
start_vhdnbd "$TMPD/sock" -v -C "$conf" 2>"$log"
main_pid=$VHDNBD_PID

# Another server reads other.vhd read-only.
"$VHDNBD" -U "$TMPD/sock2" -r -v "$TMPD/other.vhd" 2>"$TMPD/other.log" &
other_pid=$!
cleanup_fn "kill $other_pid 2>/dev/null"
wait_for 60 "the second server listening" test -S "$TMPD/sock2"

top_srcdir=$top_srcdir "$PY3" "$TMPD/reload.py" "$TMPD/sock" "$conf" "$log" "$main_pid" "$TMPD" "$other_pid" ||
  fail "reload: $(tail -40 "$log")"
wait "$other_pid" 2>/dev/null || true
stop_vhdnbd
! grep -q "AddressSanitizer\|runtime error\|LeakSanitizer" "$log" ||
  fail "sanitizer report: $(cat "$log")"
"$VHDIMG" convert -O raw "$TMPD/other.vhd" "$TMPD/other.raw" >/dev/null || fail "cannot read other.vhd"
"$PY3" -c 'import sys; assert open(sys.argv[1], "rb").read(4096) == b"\x5a" * 4096' \
  "$TMPD/other.raw" || fail "solo's write is not in other.vhd"
"$VHDIMG" convert -O raw "$TMPD/base.vhd" "$TMPD/base.raw" >/dev/null || fail "cannot read base.vhd"
"$PY3" -c 'import sys; assert open(sys.argv[1], "rb").read(8192) == b"\xba" * 8192' \
  "$TMPD/base.raw" || fail "the child's write reached its base, or the base lost its data"
echo PASS
