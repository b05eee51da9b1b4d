#!/bin/bash
# Crash safety at the server level: rounds of a verified write workload
# against vhdnbd, killed with SIGKILL at a random moment, on dynamic, fixed
# and differencing images (see kill9-crash.py for what is required): the
# server must die of that SIGKILL only, after at least 100 acknowledged
# writes a round, with no sanitizer report, and QEMU and libvhdi must read
# what the clients made durable.
#   KILL9_ROUNDS: rounds per image type (default 6, 3 in sanitizer builds)
#   KILL9_SEED:   replays a run (printed at the start)
. "$top_srcdir/tests/functions.sh"

requires_py nbd
requires_py pyvhdi
requires qemu-img
[ -x "$VHDNBD" ] || fail "$VHDNBD is not built"
[ -x "$VHDIMG" ] || fail "$VHDIMG is not built"

# Sanitizer builds run several times slower: fewer rounds keep the test short.
if sanitizer_build; then
  : "${KILL9_ROUNDS:=3}"
fi
: "${KILL9_ROUNDS:=6}"
: "${KILL9_SEED:=$(( (RANDOM << 15) | RANDOM ))}"
echo "KILL9_SEED=$KILL9_SEED (set it to replay this run's choices)"
"$PY3" "$top_srcdir/tests/stress/kill9-crash.py" "$VHDNBD" "$VHDIMG" "$TMPD" \
  "$KILL9_ROUNDS" "$KILL9_SEED" || fail "crash rounds failed (KILL9_SEED=$KILL9_SEED)"
