#!/bin/bash
# Plain WRITEs served by the event loop (ops_write_now, VHD_WRITE_NOWAIT).
# On a file system that takes buffered writes without waiting, 4 KiB WRITEs
# into allocated blocks of a dynamic and a fixed image are answered by the
# loop itself (vhdnbd_requests_on_loop_total{command="WRITE"} counts them);
# FUA WRITEs never are, and with VHDNBD_LOOP_WRITES=0 none is.  Whichever
# path a write took, every byte reads back through the server and, after a
# FLUSH and a SIGKILL, from the image file (QEMU reads it).
#
# ext4 and tmpfs refuse buffered RWF_NOWAIT writes (Linux 6.18): as root,
# with mkfs.xfs installed, the images go on an XFS file system made on a
# loop device; otherwise only the workers' path can be checked (PARTIAL).
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires_py nbd

xfs_dir
dir=$XFS_DIR

# Whether the kernel takes a buffered RWF_NOWAIT write to a cached page there.
loop_path=$("$PY3" - "$dir/probe" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
os.pwrite(fd, b"x" * 4096, 0)
ok = False
for _ in range(10):  # a timestamp update may refuse one now and then
    try:
        os.pwritev(fd, [b"y" * 4096], 0, os.RWF_NOWAIT)
        ok = True
        break
    except OSError:
        pass
os.close(fd)
os.unlink(sys.argv[1])
print("yes" if ok else "no")
PY
)
if [ "$loop_path" != yes ]; then
  echo "PARTIAL: $(df --output=fstype "$dir" | tail -n 1) takes no buffered RWF_NOWAIT writes" \
    "(and no XFS could be made): the loop's path for WRITEs is not tested"
fi

cat >"$TMPD/client.py" <<'PY'
# client.py SOCK MODEL FUA: fills the image with 2 MiB WRITEs (which the
# workers do, allocating every block), then 4 KiB WRITEs (FUA when asked)
# at random places, a FLUSH, and reads everything back.  Saves what the
# image must hold in MODEL and prints how many WRITEs it sent.
import os, random, sys, nbd
sock, model_path, fua = sys.argv[1], sys.argv[2], sys.argv[3] == "fua"
h = nbd.NBD()
h.connect_unix(sock)
size = h.get_size()
model = bytearray(size)
rng = random.Random(7)
writes = 0
big = 2 << 20
for off in range(0, size, big):
    d = rng.randbytes(big)
    h.pwrite(d, off)
    model[off:off + big] = d
    writes += 1
h.flush()
flags = nbd.CMD_FLAG_FUA if fua else 0
for _ in range(300):
    off = rng.randrange(size // 512 - 8) * 512  # sector-aligned, not page-aligned
    d = rng.randbytes(4096)
    h.pwrite(d, off, flags)
    model[off:off + 4096] = d
    writes += 1
h.flush()
got = h.pread(size, 0)
assert got == bytes(model), "the image does not read back what was written"
with open(model_path, "wb") as f:
    f.write(model)
print(writes)
PY

# metric FILE NAME COMMAND: the value of a per-export series in the
# Prometheus text file (the default export).
metric() {
  sed -n "s/^vhdnbd_$2{export=\"\",command=\"$3\"\\(,result=\"ok\"\\)\\{0,1\\}} //p" "$1"
}

# run IMAGE fua|plain LOOP_WRITES: one server, one client; sets on_loop to
# the count of WRITEs the loop served.
run() {
  local img=$1 fua=$2 lw=$3 prom=$TMPD/m.prom writes i
  rm -f "$prom"
  export VHDNBD_LOOP_WRITES=$lw
  start_vhdnbd "$TMPD/sock" --metrics-file "$prom" --metrics-interval 1 "$img" \
    2>"$TMPD/server.log"
  unset VHDNBD_LOOP_WRITES
  writes=$("$PY3" "$TMPD/client.py" "$TMPD/sock" "$TMPD/model.raw" "$fua") ||
    fail "$img ($fua, VHDNBD_LOOP_WRITES=$lw): the client failed"
  # The file is rewritten every second: wait (at most 30 s) until it counts
  # every WRITE answered.
  for ((i = 0; i < 300; i++)); do
    [ "$(metric "$prom" requests_total WRITE 2>/dev/null)" = "$writes" ] && break
    sleep 0.1
  done
  [ "$(metric "$prom" requests_total WRITE)" = "$writes" ] ||
    fail "$img: the metrics file never counted the $writes WRITEs"
  on_loop=$(metric "$prom" requests_on_loop_total WRITE)
  [ -n "$on_loop" ] || fail "no requests_on_loop_total for WRITE in the metrics file"
  # No orderly close: what the FLUSH made durable and the page cache holds
  # must be the image, whichever thread wrote it.
  kill -KILL "$VHDNBD_PID"
  wait "$VHDNBD_PID" 2>/dev/null || true
  qemu-img compare -q -f vpc -F raw "$img" "$TMPD/model.raw" >&2 ||
    fail "$img ($fua, VHDNBD_LOOP_WRITES=$lw): the file differs from what was written"
}

M=$((1024 * 1024))
for sub in dynamic fixed; do
  img=$dir/$sub.vhd
  fresh() {
    rm -f "$img"
    qemu-img create -q -f vpc -o subformat=$sub,force_size=on "$img" $((8 * M))
  }
  fresh
  run "$img" plain 1
  n=$on_loop
  echo "$sub: $n of 300 4 KiB WRITEs on the loop"
  if [ "$loop_path" = yes ]; then
    [ "$n" -gt 0 ] || fail "$sub: no WRITE was served on the loop"
  fi
  [ "$n" -le 300 ] || fail "$sub: $n WRITEs on the loop, more than the 300 that could be"
  fresh
  run "$img" fua 1
  n=$on_loop
  [ "$n" -eq 0 ] || fail "$sub: $n FUA WRITEs were served on the loop"
  fresh
  run "$img" plain 0
  n=$on_loop
  [ "$n" -eq 0 ] || fail "$sub: VHDNBD_LOOP_WRITES=0, yet $n WRITEs were served on the loop"
done
echo "ok"
