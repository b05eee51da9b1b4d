#!/bin/bash
# Replays the inputs of bugs found by fuzzing and not fixed yet
# (tests/fuzz/regressions/*-known/), with every oracle on.  Listed in
# XFAIL_TESTS: it fails while any of them still fails.  When it passes
# (XPASS), move the inputs to regressions/<target>/ and drop the XFAIL line.
. "$top_srcdir/tests/functions.sh"

fz="$top_srcdir/tests/fuzz"
failed=0
for t in vhd-open nbd-codec; do
  dir="$fz/regressions/$t-known"
  [ -d "$dir" ] || continue
  for f in "$dir"/*; do
    [ -f "$f" ] || continue
    if FUZZ_VHD_REPAIR=1 "$top_builddir/fuzz-$t-replay" "$f" >"$TMPD/out" 2>&1; then
      echo "fixed: $t ${f##*/}"
    else
      echo "still failing: $t ${f##*/}: $(grep -o 'invariant broken: .*' "$TMPD/out" | head -1)"
      failed=1
    fi
  done
done
exit $failed
