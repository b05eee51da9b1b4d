#!/bin/bash
# --idle-timeout: a client that sends no request for that long is
# disconnected with a log line; one that keeps sending requests is not.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires_py nbd

img=$TMPD/disk.vhd
qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$img" 1M
start_vhdnbd "$TMPD/sock" --idle-timeout 1 "$img" 2>"$TMPD/log"

out=$(timeout 30 "$PY3" - "$TMPD/sock" <<'PY'
import sys, time, nbd
busy, idle = nbd.NBD(), nbd.NBD()
busy.connect_unix(sys.argv[1])
idle.connect_unix(sys.argv[1])
idle.pread(512, 0)
# busy sends a request every 0.3 s for 3 s: never idle for 1 s.
for i in range(10):
    busy.pwrite(bytes([i]) * 512, 0)
    time.sleep(0.3)
assert busy.pread(512, 0) == bytes([9]) * 512
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
grep -q "no request for 1 s (--idle-timeout), closing" "$TMPD/log" ||
  fail "no log line for the idle client: $(cat "$TMPD/log")"
[ "$(grep -c "idle-timeout" "$TMPD/log")" -eq 1 ] ||
  fail "the busy client was disconnected too: $(cat "$TMPD/log")"
stop_vhdnbd
"$VHDIMG" check "$img" >/dev/null || fail "vhdimg check failed"
echo PASS
