#!/bin/bash
# --max-inflight: with a server-wide cap far below what several clients keep
# in flight, every client still completes its pipelined writes and reads
# (reading resumes for all of them as the backlog drains) and the data is
# right.
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
rc=0
"$VHDNBD" --max-inflight 0 "$img" 2>/dev/null || rc=$?
[ "$rc" -eq 2 ] || fail "--max-inflight 0: exit status $rc, expected 2"
echo PASS
