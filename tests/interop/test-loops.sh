#!/bin/bash
# --loops 3: plain clients move to the other event loops once their
# handshake is over, and nothing of theirs is lost on the way or after.
#  - Four nbdcopy writers (four connections each) fill disjoint quarters
#    of a dynamic image over a Unix socket and TCP at once; the log shows
#    clients served by loops 1 and 2, and qemu-img compare reads back the
#    source over NBD and from the file once the server is gone.
#  - A client that pipelines requests right behind NBD_OPT_GO, in the
#    same write, has them answered (they were read with the handshake and
#    move with the connection).
#  - --max-connections 3 counts moved clients: with three connected, a
#    fourth is refused.  --idle-timeout 1 closes a moved client that sends
#    nothing.
#  - SIGHUP with the export gone from the configuration drains the moved
#    clients of that export, and the server goes on serving the other.
#  - SIGTERM while a writer is moved and busy: the server drains it and
#    exits 0; every write it acknowledged before the signal is in the
#    image, which vhdimg check passes.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires nbdcopy
requires nbdinfo
requires_py nbd

M=$((1024 * 1024))
img=$TMPD/disk.vhd
qemu-img create -q -f vpc -o subformat=dynamic "$img" 64M
head -c $((64 * M)) /dev/urandom >"$TMPD/src.raw"
for q in 0 1 2 3; do
  dd if="$TMPD/src.raw" of="$TMPD/q$q.raw" bs=$M skip=$((q * 16)) count=16 status=none
done
log=$TMPD/server.log

# --- four multi-conn writers at once, read back --------------------------------
start_vhdnbd_tcp "$TMPD/sock" -v --loops 3 "$img" 2>"$log"
pids=()
for q in 0 1 2 3; do
  if [ $((q % 2)) = 0 ]; then uri="nbd+unix:///?socket=$TMPD/sock"; else uri="nbd://127.0.0.1:$VHDNBD_PORT/"; fi
  "$PY3" - "$uri" "$TMPD/q$q.raw" $((q * 16 * M)) <<'PY' &
import subprocess, sys
uri, src, off = sys.argv[1], sys.argv[2], int(sys.argv[3])
# nbdcopy writes at the destination's start: a window of the export
# through qemu-nbd would add a server; libnbd's own API writes at off.
import nbd
hs = []
for _ in range(4):
    h = nbd.NBD()
    h.connect_uri(uri)
    hs.append(h)
data = open(src, "rb").read()
step = 256 * 1024
for i, pos in enumerate(range(0, len(data), step)):
    hs[i % 4].pwrite(data[pos:pos + step], off + pos)
hs[0].flush()
for h in hs:
    h.shutdown()
PY
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a writer failed"; done
grep -q "served by event loop 1" "$log" || fail "no client moved to loop 1: $(grep -c 'served by' "$log")"
grep -q "served by event loop 2" "$log" || fail "no client moved to loop 2"
qemu-img compare -q -f raw "$TMPD/src.raw" "nbd+unix:///?socket=$TMPD/sock" ||
  fail "the export does not hold what the writers wrote"
nbdcopy "nbd://127.0.0.1:$VHDNBD_PORT/" "$TMPD/back.raw" || fail "nbdcopy over TCP failed"
cmp -s -n $((64 * M)) "$TMPD/src.raw" "$TMPD/back.raw" || fail "nbdcopy over TCP read other bytes"

# --- requests in the same write as NBD_OPT_GO -----------------------------------
"$PY3" - "$TMPD/sock" "$TMPD/src.raw" <<'PY' || fail "requests sent with GO were not answered"
import struct, sys
from nbdraw import Raw, request, name_data, OPT_GO, OPT_MAGIC, REP_ACK, REP_INFO
c = Raw.unix(sys.argv[1])
c.newstyle()
src = open(sys.argv[2], "rb").read()
go = struct.pack(">QII", OPT_MAGIC, OPT_GO, len(name_data(""))) + name_data("")
c.send(go + b"".join(request(0, i * 4096, 4096, cookie=10 + i) for i in range(8)))
_, typ, _ = c.reply()
while typ == REP_INFO:
    _, typ, _ = c.reply()
assert typ == REP_ACK, "GO refused"
got = {}
for _ in range(8):
    magic, err, cookie = struct.unpack(">IIQ", c.recv(16))
    assert magic == 0x67446698 and err == 0, "reply %#x error %d" % (magic, err)
    got[cookie] = c.recv(4096)
for i in range(8):
    assert got[10 + i] == src[i * 4096:(i + 1) * 4096], "READ %d: other bytes" % i
c.close()
PY
stop_vhdnbd || fail "the server did not exit cleanly"
qemu-img compare -q -f raw -F vpc "$TMPD/src.raw" "$img" || fail "the image file differs"

# --- max-connections counts moved clients; idle timeout on a moved one ----------
start_vhdnbd "$TMPD/sock" -v --loops 3 --max-connections 3 --idle-timeout 1 "$img" 2>"$log"
"$PY3" - "$TMPD/sock" <<'PY' || fail "connection caps across loops"
import sys, time, nbd
uri = "nbd+unix:///?socket=" + sys.argv[1]
hs = []
for _ in range(3):
    h = nbd.NBD()
    h.connect_uri(uri)
    hs.append(h)
time.sleep(0.3)
h = nbd.NBD()
try:
    h.connect_uri(uri)
    h.pread(512, 0)
    sys.exit("a fourth connection was served with --max-connections 3")
except nbd.Error:
    pass
# Nothing sent for more than the idle timeout: every one is closed.
time.sleep(2.5)
for h in hs:
    try:
        h.pread(512, 0)
        sys.exit("an idle moved client was not closed")
    except nbd.Error:
        pass
PY
grep -q "too many connections" "$log" || fail "no log line for the refused fourth client"
grep -q "no request for 1 s (--idle-timeout)" "$log" || fail "no idle-timeout line"
stop_vhdnbd || fail "the server did not exit cleanly"

# --- reload drains the moved clients of a removed export -------------------------
cp "$img" "$TMPD/other.vhd"
printf '[export a]\nimage = %s\n[export b]\nimage = %s\n' "$img" "$TMPD/other.vhd" >"$TMPD/conf"
start_vhdnbd "$TMPD/sock" -v --loops 3 -C "$TMPD/conf" 2>"$log"
"$PY3" - "$TMPD/sock" "$TMPD/conf" "$TMPD/other.vhd" "$VHDNBD_PID" "$log" <<'PY' ||
import os, signal, sys, time, nbd
sock, conf, other, pid, log = sys.argv[1:4] + [int(sys.argv[4]), sys.argv[5]]
def conn(name):
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_uri("nbd+unix:///%s?socket=%s" % (name, sock))
    return h
a = [conn("a") for _ in range(2)]
b = conn("b")
time.sleep(0.3)
open(conf, "w").write("[export b]\nimage = %s\n" % other)
os.kill(pid, signal.SIGHUP)
for _ in range(100):
    if "export 'a' removed" in open(log).read():
        break
    time.sleep(0.1)
else:
    sys.exit("the reload did not remove export a")
time.sleep(0.5)
for h in a:
    try:
        h.pread(512, 0)
        sys.exit("a drained client of the removed export was served")
    except nbd.Error:
        pass
assert len(b.pread(4096, 0)) == 4096
b.shutdown()
PY
  fail "reload across loops"
stop_vhdnbd || fail "the server did not exit cleanly"

# --- SIGTERM while a moved writer is busy --------------------------------------
qemu-img create -q -f vpc -o subformat=dynamic "$img" 64M
start_vhdnbd "$TMPD/sock" -v --loops 2 "$img" 2>"$log"
"$PY3" - "$TMPD/sock" "$VHDNBD_PID" "$TMPD/acked" <<'PY' || fail "the writer failed"
import os, signal, sys, threading, time, nbd
sock, pid, acked_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
h = nbd.NBD()
h.connect_uri("nbd+unix:///?socket=" + sock)
acked = []
lock = threading.Lock()
def done(i):
    def cb(err):
        if err.value == 0:
            with lock:
                acked.append(i)
        return 1
    return cb
# Blocks of 64 KiB, each filled with its index + 1: many in flight when
# the signal comes.
sent = 0
t0 = time.monotonic()
signalled = False
while sent < 1024:
    while h.aio_in_flight() < 16 and sent < 1024:
        h.aio_pwrite(bytes([sent % 255 + 1]) * 65536, sent * 65536, completion=done(sent))
        sent += 1
    try:
        h.poll(-1)
    except nbd.Error:
        break
    if not signalled and sent >= 256:
        with lock:
            before = list(acked)
        os.kill(pid, signal.SIGTERM)
        signalled = True
        break
# Whatever else is answered after the signal was still acknowledged: keep
# reading replies until the server closes.
try:
    while h.aio_in_flight() > 0:
        h.poll(-1)
except nbd.Error:
    pass
with lock:
    open(acked_path, "w").write(" ".join(map(str, sorted(acked))))
assert before, "nothing acknowledged before the signal"
PY
wait "$VHDNBD_PID"; st=$?
[ "$st" = 0 ] || fail "the server exited $st after SIGTERM: $(tail -3 "$log")"
"$VHDIMG" check "$img" >"$TMPD/check.out" 2>&1 || fail "vhdimg check: $(cat "$TMPD/check.out")"
"$PY3" - "$img" "$TMPD/acked" <<'PY' || fail "an acknowledged write is missing from the image"
import subprocess, sys
img, acked = sys.argv[1], [int(x) for x in open(sys.argv[2]).read().split()]
raw = img + ".raw"
subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", img, raw], check=True)
data = open(raw, "rb").read()
for i in acked:
    blk = data[i * 65536:(i + 1) * 65536]
    assert blk == bytes([i % 255 + 1]) * 65536, "block %d acknowledged, not in the image" % i
print(len(acked), "acknowledged writes all in the image")
PY
exit 0
