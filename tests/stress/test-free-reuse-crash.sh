#!/bin/bash
# Crash safety where blocks are freed and their space taken again: rounds of
# whole-block trims and write-zeroes, partial ones and writes on several
# connections of a dynamic image of 64 KiB blocks, ended by SIGKILL or an
# injected power cut; the engine and QEMU (which reads a block's data area
# whole, bitmaps or not) must read only states the acknowledged requests
# allow (see free-reuse-crash.py).
#   FREE_REUSE_ROUNDS: rounds per mode (default 4, 2 in sanitizer builds)
#   FREE_REUSE_SEED:   replays a run's choices (printed at the start)
. "$top_srcdir/tests/functions.sh"

requires_py nbd
requires qemu-img
[ -x "$VHDNBD" ] || fail "$VHDNBD is not built"
[ -x "$VHDIMG" ] || fail "$VHDIMG is not built"

if sanitizer_build; then
  : "${FREE_REUSE_ROUNDS:=2}"
fi
: "${FREE_REUSE_ROUNDS:=4}"
: "${FREE_REUSE_SEED:=$(( (RANDOM << 15) | RANDOM ))}"
echo "FREE_REUSE_SEED=$FREE_REUSE_SEED (set it to replay this run's choices)"
for mode in kill cut; do
  "$PY3" "$top_srcdir/tests/stress/free-reuse-crash.py" "$VHDNBD" "$VHDIMG" "$TMPD/$mode" \
    "$FREE_REUSE_ROUNDS" "$FREE_REUSE_SEED" $mode ||
    fail "$mode rounds failed (FREE_REUSE_SEED=$FREE_REUSE_SEED)"
done
echo "PASS: freed blocks' space is taken again safely across crashes"
