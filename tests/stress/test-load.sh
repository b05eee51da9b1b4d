#!/bin/bash
# Bounded load: many concurrent connections doing verified reads and writes
# on disjoint ranges while hostile clients come and go (see load.py).  Every
# good client must succeed, nothing written may be lost, and the server's
# peak resident memory must stay bounded.
#   LOAD_CONNECTIONS (default 200), LOAD_SECONDS (default 20),
#   LOAD_RSS_LIMIT_MB (default 512), LOAD_BIG_WRITERS (default 2).
# make check runs the default; a heavier run is by hand, e.g.
#   LOAD_CONNECTIONS=1000 make check TESTS=tests/stress/test-load.sh
# (it needs about 2200 file descriptors and skips without them).
. "$top_srcdir/tests/functions.sh"

requires_py nbd
[ -x "$VHDNBD" ] || fail "$VHDNBD is not built"
[ -x "$VHDIMG" ] || fail "$VHDIMG is not built"

: "${LOAD_CONNECTIONS:=200}"
: "${LOAD_SECONDS:=20}"
if sanitizer_build; then
  # AddressSanitizer's shadow memory and quarantine inflate the RSS: keep the
  # quarantine small and the bound loose; the real bound is checked in
  # ordinary builds.
  export ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=32"
  : "${LOAD_RSS_LIMIT_MB:=1024}"
fi
: "${LOAD_RSS_LIMIT_MB:=512}"
slot=$((128 * 1024))
# Good clients, hostile ones, libnbd's own descriptors, some slack.
need=$((LOAD_CONNECTIONS * 2 + 200))
ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
  echo "SKIP: needs $need file descriptors, ulimit -n is $(ulimit -n)" >&2
  exit 77
fi

img="$TMPD/load.vhd"
# The good clients' ranges, then 32 MiB of scratch for hostile writers.
"$VHDIMG" create -t dynamic --block-size 64K --exact "$img" \
  $((LOAD_CONNECTIONS * slot + 32 * 1024 * 1024)) >/dev/null
sock="$TMPD/nbd.sock"
# The default --max-connections (128) is below the load: allow every good
# client plus the hostile ones.
start_vhdnbd "$sock" --quiet --quiet --max-connections $((LOAD_CONNECTIONS + 100)) "$img"
"$PY3" "$top_srcdir/tests/stress/load.py" "$sock" "$VHDNBD_PID" "$LOAD_CONNECTIONS" \
  "$LOAD_SECONDS" "$slot" "$LOAD_RSS_LIMIT_MB" || fail "load run failed"
kill -0 "$VHDNBD_PID" 2>/dev/null || fail "the server died"
kill "$VHDNBD_PID"
wait "$VHDNBD_PID" || fail "the server did not exit cleanly after SIGTERM (exit $?)"
"$VHDIMG" check "$img" >/dev/null || fail "the image does not check clean after the load"
