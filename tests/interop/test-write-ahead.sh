#!/bin/bash
# A connection reads no further request while 2 MiB of its WRITE payloads
# wait to be stored (SERVER_WRITE_AHEAD_BYTES): 24 WRITEs of 1 MiB with
# FUA, sent all at once, each waiting for the disk, must make the server
# stop reading that client (vhdnbd_write_ahead_pauses_total counts the
# pauses) and still store every byte; 256 WRITEs of 4 KiB sent at once
# (1 MiB in all) never reach the cap.  Over a Unix socket and TCP.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires_py nbd

M=$((1024 * 1024))
img=$TMPD/fixed.vhd
prom=$TMPD/m.prom

cat >"$TMPD/client.py" <<'PY'
# client.py URI LEN COUNT: COUNT WRITEs of LEN bytes with FUA, all in
# flight at once, then each read back.
import random, sys, nbd
uri, n, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = nbd.NBD()
h.connect_uri(uri)
rng = random.Random(5)
data = [rng.randbytes(n) for _ in range(count)]
for i, d in enumerate(data):
    h.aio_pwrite(d, i * n, flags=nbd.CMD_FLAG_FUA)
while h.aio_in_flight() > 0:
    h.poll(-1)
for i, d in enumerate(data):
    assert h.pread(n, i * n) == d, f"WRITE {i} at {i * n} does not read back"
PY

# run LABEL LEN COUNT URI-KIND: one server, one client; sets pauses.
run() {
  local label=$1 len=$2 count=$3 kind=$4 uri
  rm -f "$img" "$prom"
  qemu-img create -q -f vpc -o subformat=fixed,force_size=on "$img" $((32 * M))
  if [ "$kind" = tcp ]; then
    start_vhdnbd_tcp "$TMPD/sock" --metrics-file "$prom" "$img" 2>"$TMPD/server.log"
    uri="nbd://127.0.0.1:$VHDNBD_PORT"
  else
    start_vhdnbd "$TMPD/sock" --metrics-file "$prom" "$img" 2>"$TMPD/server.log"
    uri="nbd+unix:///?socket=$TMPD/sock"
  fi
  "$PY3" "$TMPD/client.py" "$uri" "$len" "$count" || fail "$label: the client failed"
  stop_vhdnbd
  [ "$(requests_ok "$prom" WRITE)" = "$count" ] ||
    fail "$label: $(requests_ok "$prom" WRITE) WRITEs succeeded, not $count"
  pauses=$(export_metric "$prom" write_ahead_pauses_total)
  [ -n "$pauses" ] || fail "$label: no write_ahead_pauses_total in the metrics file"
  echo "$label: $pauses pauses"
}

for kind in unix tcp; do
  run "24 x 1 MiB FUA, $kind" $M 24 $kind
  [ "$pauses" -ge 1 ] || fail "24 WRITEs of 1 MiB sent at once over $kind: the server never stopped reading"
  run "256 x 4 KiB FUA, $kind" 4096 256 $kind
  [ "$pauses" -eq 0 ] || fail "256 WRITEs of 4 KiB ($kind) made the server stop reading $pauses times"
done
echo ok
