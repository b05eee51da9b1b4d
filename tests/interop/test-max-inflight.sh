#!/bin/bash
# --max-inflight: with a server-wide cap far below what several clients keep
# in flight, every client still completes its pipelined writes and reads
# (reading resumes for all of them as the backlog drains) and the data is
# right.  Then clients that pipeline far more READs than the cap and do not
# read the replies: the server must stop reading (its debug line says so)
# and its resident memory must stay near the cap, until they read.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires_py nbd

img=$TMPD/disk.vhd
qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$img" 64M
start_vhdnbd "$TMPD/sock" --max-inflight 1M "$img" 2>"$TMPD/log"

cat >"$TMPD/client.py" <<'PY'
import sys, nbd
sock, n = sys.argv[1], int(sys.argv[2])
h = nbd.NBD()
h.connect_unix(sock)
size = 2 << 20
base = n * 16 * size
data = [bytearray([(n * 16 + k) % 255 + 1]) * size for k in range(8)]
wb = [nbd.Buffer.from_bytearray(d) for d in data]
for k, b in enumerate(wb):
    h.aio_pwrite(b, base + k * size)
while h.aio_in_flight() > 0:
    h.poll(-1)
rb = [nbd.Buffer(size) for _ in data]
for k, b in enumerate(rb):
    h.aio_pread(b, base + k * size)
while h.aio_in_flight() > 0:
    h.poll(-1)
for k, b in enumerate(rb):
    assert b.to_bytearray() == data[k], "client %d: read %d differs" % (n, k)
h.shutdown()
print("ok")
PY
pids=()
for n in 0 1; do
  timeout 40 "$PY3" "$TMPD/client.py" "$TMPD/sock" "$n" >"$TMPD/out$n" 2>&1 &
  pids+=($!)
done
for n in 0 1; do
  wait "${pids[$n]}" || fail "client $n: $(cat "$TMPD/out$n")"
  [ "$(cat "$TMPD/out$n")" = ok ] || fail "client $n: $(cat "$TMPD/out$n")"
done
stop_vhdnbd
"$VHDIMG" check "$img" >/dev/null || fail "vhdimg check failed"

# 4 clients x 32 pipelined 1 MiB READs = 128 MiB asked for, against a 4 MiB
# cap.  Each request is counted when its header is read, and one more
# request may start before the count is checked: the server should buffer
# about 5 MiB, and never more than the bound below.
cap_mib=4 nclients=4 nreads=32 bound_mib=40
fixed=$TMPD/fixed.vhd
qemu-img create -q -f vpc -o subformat=fixed,force_size=on "$fixed" 64M
start_vhdnbd "$TMPD/sock2" -v -v --max-inflight ${cap_mib}M "$fixed" 2>"$TMPD/log2"
base_kib=$(vm_kib "$VHDNBD_PID" VmRSS)
mkfifo "$TMPD/go"
cat >"$TMPD/noreader.py" <<'PY'
import socket, struct, sys, threading
sock, nclients, nreads, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
MiB = 1 << 20

def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "server closed the connection"
        buf += chunk
    return bytes(buf)

def raw_go(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    g = recv_exact(s, 18)
    assert g[:8] == b"NBDMAGIC", g
    s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
    s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, 6) + b"\0" * 6)  # GO ""
    while True:
        magic, opt, typ, ln = struct.unpack(">QIII", recv_exact(s, 20))
        recv_exact(s, ln)
        assert not typ & 0x80000000, "GO refused: %#x" % typ
        if typ == 1:
            return s

# Every handshake first: once the cap is reached the server reads from
# nobody, so a handshake after that would wait for the replies below.
conns = [raw_go(sock) for _ in range(nclients)]
for c, s in enumerate(conns):
    s.sendall(b"".join(struct.pack(">IHHQQI", 0x25609513, 0, 0, c * nreads + i,
                                   (i % 64) * MiB, MiB) for i in range(nreads)))
print("sent", flush=True)
open(go).read()
# All at once: replies stuck on any one connection hold the cap for all.
errors = []
def reader(c, s):
    try:
        for i in range(nreads):
            magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
            assert magic == 0x67446698 and err == 0, (magic, err)
            assert cookie // nreads == c, "cookie %d on connection %d" % (cookie, c)
            assert recv_exact(s, MiB) == b"\0" * MiB, "READ %d: wrong data" % cookie
        s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 0, 0, 0))  # DISC
    except Exception as e:
        errors.append("connection %d: %r" % (c, e))
threads = [threading.Thread(target=reader, args=(c, s)) for c, s in enumerate(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("\n".join(errors) or "ok", flush=True)
PY
timeout 120 "$PY3" "$TMPD/noreader.py" "$TMPD/sock2" $nclients $nreads "$TMPD/go" \
  >"$TMPD/noreader.out" 2>&1 &
noreader=$!
cleanup_fn "kill $noreader 2>/dev/null"
wait_for 60 "the READs sent" grep -qx sent "$TMPD/noreader.out"
wait_for 60 "a debug line saying the server stopped reading at the cap" \
  grep -qE "stopped reading from (every client|its clients)" "$TMPD/log2"
hwm_kib=$(vm_kib "$VHDNBD_PID" VmHWM)
grown_mib=$(((hwm_kib - base_kib) / 1024))
echo "server VmRSS at start $((base_kib / 1024)) MiB, peak with the cap reached" \
  "$((hwm_kib / 1024)) MiB (+$grown_mib MiB, bound +$bound_mib MiB)"
[ "$grown_mib" -lt "$bound_mib" ] ||
  fail "the server grew by $grown_mib MiB for a ${cap_mib} MiB --max-inflight"
echo go >"$TMPD/go"
wait "$noreader" || fail "the clients did not get every reply: $(cat "$TMPD/noreader.out")"
grep -qx ok "$TMPD/noreader.out" || fail "clients: $(cat "$TMPD/noreader.out")"
stop_vhdnbd
rc=0
"$VHDNBD" --max-inflight 0 "$img" 2>/dev/null || rc=$?
[ "$rc" -eq 2 ] || fail "--max-inflight 0: exit status $rc, expected 2"
echo PASS
