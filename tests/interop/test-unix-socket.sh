#!/bin/bash
# The Unix socket (-U):
#   a server already listening on the path keeps it: a second server
#   refuses to start, naming the problem, and the first goes on serving;
#   a socket nobody listens on (left by a killed server) is replaced;
#   at exit a server removes its own socket only, not one that took the
#   path meanwhile;
#   under the systemd unit's UMask a member of the socket's group may
#   connect and anybody else may not (root only: the test changes user).
. "$top_srcdir/tests/functions.sh"
requires nbdinfo
requires_py nbd

"$VHDIMG" create --exact "$TMPD/a.vhd" 16M >/dev/null
"$VHDIMG" create --exact "$TMPD/b.vhd" 32M >/dev/null
sock=$TMPD/sock
size_of() { nbdinfo --size "nbd+unix:///?socket=$1"; }

start_vhdnbd "$sock" "$TMPD/a.vhd" 2>"$TMPD/a.log"
a_pid=$VHDNBD_PID
rc=0
timeout 60 "$VHDNBD" -U "$sock" "$TMPD/b.vhd" 2>"$TMPD/b.log" || rc=$?
[ "$rc" -eq 1 ] || fail "a second server on a live socket exited $rc, not 1: $(cat "$TMPD/b.log")"
grep -q "a server is listening on this socket" "$TMPD/b.log" ||
  fail "the second server does not say why: $(cat "$TMPD/b.log")"
[ "$(size_of "$sock")" = $((16 << 20)) ] || fail "the first server lost its socket"
stop_vhdnbd
[ ! -e "$sock" ] || fail "the socket stayed after the server exited"

# A socket file nobody listens on, as a killed server leaves it.
"$PY3" -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$sock"
[ -S "$sock" ] || fail "no stale socket made"
start_vhdnbd "$sock" "$TMPD/b.vhd" 2>"$TMPD/b.log"
[ "$(size_of "$sock")" = $((32 << 20)) ] || fail "the stale socket was not replaced"
# Another socket takes the path while the server runs: it stays.
rm "$sock"
"$PY3" -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$sock"
stop_vhdnbd
[ -S "$sock" ] || fail "the server removed a socket that was not its own"
rm -f "$sock"

# Group access under the unit's umask.
umask_unit=$(sed -n 's/^UMask=//p' "$top_srcdir/systemd/vhdnbd.service.in")
[ -n "$umask_unit" ] || fail "no UMask= in the unit"
if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP: group access: needs root to connect as another user"
  echo PASS
  exit 0
fi
chmod 0755 "$TMPD"
(umask "$umask_unit" && exec "$VHDNBD" -U "$sock" --pidfile "$TMPD/pid" "$TMPD/a.vhd") \
  2>"$TMPD/g.log" &
g_pid=$!
cleanup_fn "kill $g_pid 2>/dev/null"
wait_for 60 "vhdnbd under the unit's umask writing its pidfile" test -s "$TMPD/pid"
gid=$(stat -c %g "$sock")
connect_as() { # GID: prints ok or the error
  "$PY3" - "$sock" "$1" <<'PY'
import os, sys, nbd
os.setgroups([])
os.setgid(int(sys.argv[2]))
os.setuid(65534)
try:
    h = nbd.NBD()
    h.connect_unix(sys.argv[1])
    print("ok", h.get_size())
    h.shutdown()
except nbd.Error as e:
    print("refused:", e)
PY
}
out=$(connect_as "$gid")
[ "$out" = "ok $((16 << 20))" ] ||
  fail "a member of the socket's group cannot connect under UMask=$umask_unit: $out ($(stat -c %A "$sock"))"
other=$((gid == 65534 ? 65533 : 65534))
out=$(connect_as "$other")
case $out in refused:*) ;; *) fail "a user outside the socket's group connected: $out" ;; esac
kill "$g_pid"
wait "$g_pid" || fail "the server exited with status $?"
echo PASS
