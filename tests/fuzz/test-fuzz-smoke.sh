#!/bin/bash
# Builds the libFuzzer targets ("make fuzz", clang) and runs each for a short
# while over a copy of its seed corpus; any crash fails.  The long runs are
# done by hand: see tests/fuzz/README.md.
. "$top_srcdir/tests/functions.sh"

requires clang
: "${FUZZ_SECONDS:=15}"
probe="$TMPD/probe.c"
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return d && n; }' >"$probe"
if ! clang -fsanitize=fuzzer,address,undefined "$probe" -o "$TMPD/probe" >/dev/null 2>&1; then
  echo "SKIP: clang cannot link -fsanitize=fuzzer (install libclang-rt-14-dev)" >&2
  exit 77
fi

if ! make -C "$top_builddir" fuzz >"$TMPD/build.log" 2>&1; then
  cat "$TMPD/build.log" >&2
  fail "make fuzz did not build the fuzz targets"
fi

fz="$top_srcdir/tests/fuzz"
for t in vhd-open:corpus-vhd nbd-codec:corpus-nbd nbd-server:corpus-server; do
  target=${t%%:*}
  corpus=${t#*:}
  work="$TMPD/$target"
  mkdir -p "$work/corpus" "$work/artifacts"
  cp "$fz/$corpus"/* "$work/corpus/"
  # Saved crashes go first: each must now pass.
  if [ -d "$fz/regressions/$target" ]; then
    cp "$fz/regressions/$target"/* "$work/corpus/" 2>/dev/null || true
  fi
  log="$work/fuzz.log"
  rc=0
  (cd "$work" && ASAN_OPTIONS=detect_leaks=1 TMPDIR="$work" \
        timeout $((FUZZ_SECONDS + 120)) "$top_builddir/tests/fuzz/fuzz-$target" \
          -max_total_time="$FUZZ_SECONDS" -timeout=60 -rss_limit_mb=2048 \
          -artifact_prefix="$work/artifacts/" -print_final_stats=1 corpus \
          >"$log" 2>&1) || rc=$?
  if [ "$rc" != 0 ]; then
    tail -60 "$log" >&2
    ls -l "$work/artifacts" >&2
    # The scratch directory goes with the test: the input stays in the log.
    for a in "$work/artifacts"/*; do
      [ -f "$a" ] || continue
      echo "--- $(basename "$a"), base64 (base64 -d > tests/fuzz/regressions/$target/NAME):" >&2
      base64 "$a" >&2
    done
    fail "fuzz-$target crashed; the input is above (add it to tests/fuzz/regressions/$target)"
  fi
  grep -E '^(#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units)' "$log" | tail -2
done
