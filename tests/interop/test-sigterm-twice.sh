#!/bin/bash
# A second SIGTERM while vhdnbd closes its images changes nothing: the
# images are closed as after one (the allocation window given back), the
# pidfile is removed and the exit status is 0.  timeout(1) sends two, to
# the server and to its process group (as systemd does to every process of
# a unit); before, the second one often ended the server mid-close.
. "$top_srcdir/tests/functions.sh"
requires timeout
requires_py nbd

for round in 1 2 3 4 5 6; do
  img=$TMPD/r$round.vhd
  "$VHDIMG" create --exact "$img" 16M >/dev/null
  rm -f "$TMPD/pid" "$TMPD/sock"
  timeout 120 "$VHDNBD" -U "$TMPD/sock" --pidfile "$TMPD/pid" "$img" 2>"$TMPD/log" &
  tpid=$!
  cleanup_fn "kill $tpid 2>/dev/null"
  wait_for 60 "round $round: vhdnbd writing its pidfile" test -s "$TMPD/pid"
  # One sector written and flushed: its block takes a window of new-block
  # space, given back when the image closes.
  "$PY3" -c '
import nbd, sys
h = nbd.NBD()
h.connect_unix(sys.argv[1])
h.pwrite(b"x" * 512, 0)
h.flush()
h.shutdown()' "$TMPD/sock" || fail "round $round: the client failed"
  kill -TERM "$tpid"
  rc=0
  wait "$tpid" || rc=$?
  [ "$rc" -eq 0 ] || fail "round $round: vhdnbd under timeout(1) ended with status $rc: $(cat "$TMPD/log")"
  [ ! -e "$TMPD/pid" ] || fail "round $round: the pidfile was left behind"
  "$VHDIMG" check "$img" >"$TMPD/check" 2>&1 || fail "round $round: check: $(cat "$TMPD/check")"
  ! grep -q "reserved for new blocks" "$TMPD/check" ||
    fail "round $round: the allocation window was not given back: $(cat "$TMPD/check")"
done
echo "PASS: a second SIGTERM during the close changes nothing"
