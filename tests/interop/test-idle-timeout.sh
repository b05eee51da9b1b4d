#!/bin/bash
# --idle-timeout: a client that sends no request for that long is
# disconnected with a log line; one that keeps sending requests is not.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires_py nbd

img=$TMPD/disk.vhd
qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$img" 1M
start_vhdnbd "$TMPD/sock" --idle-timeout 2 "$img" 2>"$TMPD/log"

# busy keeps two requests queued at all times, so the server always has one
# to read or answer, until the server logs that it dropped idle (bounded
# wait); then both are checked.  No step depends on how long anything takes.
out=$(timeout 120 "$PY3" - "$TMPD/sock" "$TMPD/log" <<'PY'
import sys, time, nbd
busy, idle = nbd.NBD(), nbd.NBD()
busy.connect_unix(sys.argv[1])
idle.connect_unix(sys.argv[1])
idle.pread(512, 0)
line = "no request for 2 s (--idle-timeout), closing"
deadline = time.monotonic() + 60
n = 0
while line not in open(sys.argv[2]).read():
    assert time.monotonic() < deadline, "no idle-timeout line within 60 s"
    while busy.aio_in_flight() < 2:
        busy.aio_pwrite(nbd.Buffer.from_bytearray(bytearray([n % 256]) * 512), 0)
        n += 1
    busy.poll(100)
while busy.aio_in_flight() > 0:
    busy.poll(-1)
assert busy.pread(512, 0) == bytes([(n - 1) % 256]) * 512
busy.shutdown()
try:
    idle.pread(512, 0)
    print("idle client still connected")
except nbd.Error as e:
    print("idle client closed:", e.string)
PY
) || fail "client failed: $out"
echo "$out"
[[ $out == "idle client closed:"* ]] || fail "the idle client was not disconnected: $out"
grep -q "no request for 2 s (--idle-timeout), closing" "$TMPD/log" ||
  fail "no log line for the idle client: $(cat "$TMPD/log")"
[ "$(grep -c "idle-timeout" "$TMPD/log")" -eq 1 ] ||
  fail "the busy client was disconnected too: $(cat "$TMPD/log")"
stop_vhdnbd
"$VHDIMG" check "$img" >/dev/null || fail "vhdimg check failed"
echo PASS
