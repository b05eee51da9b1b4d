#!/bin/bash
# Write lanes narrowed to one while writes hold the file long (lanes.h).
# 4 MiB WRITEs take far longer than the 16 us that narrows the lanes on any
# machine (the copy alone), so after the first few of them the server sends
# the rest to one lane: vhdnbd_writes_one_lane_total counts them.  With
# VHDNBD_ADAPTIVE_LANES=0, or with one lane to begin with (--write-lanes 1),
# none is counted.  Whichever lanes the writes took, every byte reads back
# through the server and, after the server stops, from the image file
# (QEMU reads it).
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires_py nbd

M=$((1024 * 1024))
img=$TMPD/fixed.vhd
prom=$TMPD/m.prom

cat >"$TMPD/client.py" <<'PY'
# client.py SOCK MODEL: 4 MiB WRITEs over the whole image, twice (4 in
# flight at a time, so that the lanes have work to share), a FLUSH, and
# the image read back; saves what it must hold in MODEL and prints how
# many WRITEs were sent.
import random, sys, nbd
sock, model_path = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_unix(sock)
size = h.get_size()
model = bytearray(size)
rng = random.Random(11)
chunk = 4 << 20
writes = 0
for _ in range(2):
    offs = list(range(0, size, chunk))
    rng.shuffle(offs)
    for off in offs:
        while h.aio_in_flight() >= 4:
            h.poll(-1)
        d = rng.randbytes(chunk)
        h.aio_pwrite(d, off)
        model[off:off + chunk] = d
        writes += 1
    while h.aio_in_flight() > 0:
        h.poll(-1)
h.flush()
for off in range(0, size, chunk):
    assert h.pread(chunk, off) == model[off:off + chunk], \
        f"the image does not read back what was written at {off}"
with open(model_path, "wb") as f:
    f.write(model)
print(writes)
PY

# run LABEL ARGS...: one server with ARGS, one client; sets one_lane to the
# WRITEs the server counted as narrowed to one lane.
run() {
  local label=$1 writes
  shift
  rm -f "$img" "$prom"
  qemu-img create -q -f vpc -o subformat=fixed,force_size=on "$img" $((64 * M))
  start_vhdnbd "$TMPD/sock" --metrics-file "$prom" --metrics-interval 1 --threads 4 "$@" \
    "$img" 2>"$TMPD/server.log"
  writes=$("$PY3" "$TMPD/client.py" "$TMPD/sock" "$TMPD/model.raw") ||
    fail "$label: the client failed"
  # The last figures are written once the server stops.
  stop_vhdnbd
  [ "$(requests_ok "$prom" WRITE)" = "$writes" ] ||
    fail "$label: the metrics file counts $(requests_ok "$prom" WRITE) WRITEs, not $writes"
  one_lane=$(export_metric "$prom" writes_one_lane_total)
  [ -n "$one_lane" ] || fail "$label: no writes_one_lane_total in the metrics file"
  qemu-img compare -q -f vpc -F raw "$img" "$TMPD/model.raw" >&2 ||
    fail "$label: the image differs from what was written"
  echo "$label: $one_lane of $writes WRITEs on one lane"
}

run "two lanes" --write-lanes 2
# At most the first four start before any has ended, and eight long ones
# ended bring the average over the threshold from nothing: at least 20 of
# the 32 must have been narrowed.
[ "$one_lane" -ge 20 ] || fail "two lanes: only $one_lane of 32 long WRITEs ran on one lane"

export VHDNBD_ADAPTIVE_LANES=0
run "VHDNBD_ADAPTIVE_LANES=0" --write-lanes 2
unset VHDNBD_ADAPTIVE_LANES
[ "$one_lane" -eq 0 ] || fail "VHDNBD_ADAPTIVE_LANES=0, yet $one_lane WRITEs were narrowed"

run "one lane" --write-lanes 1
[ "$one_lane" -eq 0 ] || fail "--write-lanes 1, yet $one_lane WRITEs were counted as narrowed"
echo "ok"
