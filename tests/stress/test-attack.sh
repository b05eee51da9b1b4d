#!/bin/bash
# Under attack the server keeps serving everyone else, with bounded memory:
# while hostile clients from 127.0.0.1 (see attack.py: connections that
# never negotiate, from one address and from many; connections that never
# read their replies; WRITE payloads trickled a byte a second; all at once)
# do their worst against the default limits, every request of a legitimate
# client from 127.0.0.2 is answered within 1 s, the server's resident
# memory stays under 256 MiB, and the image checks clean afterwards.
#   ATTACK_LATENCY_LIMIT (seconds), ATTACK_RSS_LIMIT_MB, ATTACK_PHASES
. "$top_srcdir/tests/functions.sh"

[ -x "$VHDNBD" ] || fail "$VHDNBD is not built"
[ -x "$VHDIMG" ] || fail "$VHDIMG is not built"
"$PY3" - <<'PY' || { echo "SKIP: cannot connect from 127.0.0.2-127.0.0.9 to 127.0.0.1" >&2; exit 77; }
import socket
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(8)
for i in range(2, 10):
    c = socket.socket()
    c.bind(("127.0.0.%d" % i, 0))
    c.connect(srv.getsockname())
    c.close()
PY
need=1200 # the attackers' sockets, the server's and some slack
ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
  echo "SKIP: needs $need file descriptors, ulimit -n is $(ulimit -n)" >&2
  exit 77
fi

: "${ATTACK_LATENCY_LIMIT:=1}"
: "${ATTACK_RSS_LIMIT_MB:=256}"
if sanitizer_build; then
  # AddressSanitizer slows the loop several times over and its shadow memory
  # and quarantine inflate the RSS: looser bounds there (the real ones hold
  # in ordinary builds).
  export ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=16"
  ATTACK_LATENCY_LIMIT=2
  ATTACK_RSS_LIMIT_MB=512
fi

img="$TMPD/attack.vhd"
"$VHDIMG" create -t dynamic "$img" 256M >/dev/null
port=$(free_tcp_port)
# Default limits: the point is that they hold as they are.
start_vhdnbd "$TMPD/sock" -b 127.0.0.1 -p "$port" "$img" 2>"$TMPD/log"
# shellcheck disable=SC2086
"$PY3" "$top_srcdir/tests/stress/attack.py" "$port" "$VHDNBD_PID" "$ATTACK_LATENCY_LIMIT" \
  "$ATTACK_RSS_LIMIT_MB" ${ATTACK_PHASES:-} || {
  # What the server said and what it holds, to tell a starved host from a bug.
  echo "--- server log (last 40 lines)"; tail -n 40 "$TMPD/log"
  echo "--- server status"; grep -E '^(VmRSS|VmHWM|Threads)' "/proc/$VHDNBD_PID/status" || true
  uptime || true
  fail "the server did not hold under attack"
}
kill -0 "$VHDNBD_PID" 2>/dev/null || fail "the server died"
stop_vhdnbd
# Thousands of attackers were closed, in a summary a second at most.
closed=$(grep -c "connections closed in the last second" "$TMPD/log" || true)
lines=$(wc -l <"$TMPD/log")
echo "$lines log lines, $closed of them summaries of closed connections"
[ "$closed" -gt 0 ] || fail "no summary of the connections closed: $(head -5 "$TMPD/log")"
[ "$lines" -le 200 ] || fail "$lines log lines: not in aggregate: $(sort "$TMPD/log" | uniq -c | sort -rn | head -5)"
"$VHDIMG" check "$img" >/dev/null || fail "the image does not check clean after the attacks"
echo PASS
