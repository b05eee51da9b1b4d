#!/bin/bash
# Replays the fuzz seed corpora and every saved crash (tests/fuzz/regressions)
# through the fuzz targets' entry points, built by the ordinary compiler (and
# with ASan/UBSan in sanitizer builds): a fixed crash stays fixed.
. "$top_srcdir/tests/functions.sh"

fz="$top_srcdir/tests/fuzz"
for t in vhd-open:corpus-vhd nbd-codec:corpus-nbd nbd-server:corpus-server; do
  target=${t%%:*}
  corpus=${t#*:}
  bin="$top_builddir/fuzz-$target-replay"
  [ -x "$bin" ] || fail "$bin is not built"
  inputs=("$fz/$corpus")
  [ -d "$fz/regressions/$target" ] && inputs+=("$fz/regressions/$target")
  out=$("$bin" "${inputs[@]}" 2>&1) || { echo "$out" >&2; fail "fuzz-$target: an input crashed or broke an invariant"; }
  echo "$out"
  n=$(echo "$out" | sed -n 's/.*replayed \([0-9]*\) input.*/\1/p')
  [ "${n:-0}" -ge 5 ] || fail "fuzz-$target replayed only ${n:-0} inputs: corpus missing?"
done
