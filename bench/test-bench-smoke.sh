#!/bin/bash
# bench/run --smoke runs every server on every image and prints a complete
# report: a number in every table row, memory and open-time figures, and a
# verdict for every target.
. "$top_srcdir/tests/functions.sh"

requires fio
requires qemu-img
requires qemu-nbd
requires nbdkit
if ! fio --enghelp=nbd >/dev/null 2>&1; then
  echo "SKIP: this fio has no nbd engine" >&2
  exit 77
fi
[ -x "$VHDNBD" ] || fail "$VHDNBD is not built"

report=$TMPD/report.md
if ! TMPDIR=$TMPD timeout 300 "$top_srcdir/bench/run" --smoke --output "$report" \
  >"$TMPD/stdout" 2>"$TMPD/stderr"; then
  cat "$TMPD/stderr" "$TMPD/stdout" >&2
  fail "bench/run --smoke failed"
fi
cmp -s "$report" "$TMPD/stdout" || fail "--output differs from what bench/run printed"

num='[0-9]+(\.[0-9]+)?'
row() { # WORKLOAD IMAGE SERVER [vhdnbd ratio columns expected: 1]
  local re="^\| $1 \| $2 \| $3 \| $num \| $num \| $num \| "
  if [ "${4:-0}" = 1 ]; then
    re+="$num \| $num \|$"
  fi
  grep -Eq "$re" "$report" || fail "no complete row for $1 on $2 served by $3"
}
# vhdnbd rows carry both ratios where qemu-nbd can serve the image.
for img in alloc fixed; do
  row rr4k-qd16 "$img" vhdnbd 1
  row rr4k-qd16 "$img" qemu-nbd
done
row rr4k-qd16 diff vhdnbd
row rr4k-qd16 raw nbdkit-raw
for img in empty alloc fixed; do
  row rw4k-4conn "$img" vhdnbd 1
  row rw4k-4conn "$img" qemu-nbd
done
row rw4k-4conn diff vhdnbd
row rw4k-4conn raw-sparse nbdkit-raw
row rw4k-4conn raw nbdkit-raw
rows=$(grep -Ec '^\| (rr4k|rw4k|sr1m|sw1m)' "$report")
[ "$rows" -eq 15 ] || fail "expected 15 benchmark rows, got $rows"

# The memory table has 1 and 20 idle connections for each server.
for s in vhdnbd qemu-nbd nbdkit-raw; do
  for n in 1 20; do
    grep -Eq "^\| $s \| $n \| $num \| " "$report" || fail "no VmRSS for $s with $n idle connections"
  done
done
grep -Eq "^\| vhd_open \| $num \| $num \| $num \| $num \|$" "$report" || fail "no vhd_open timing"
grep -Eq "^\| vhdnbd start to greeting \| $num \| " "$report" || fail "no vhdnbd startup timing"

targets=$(grep -Ec '^\| .* \| (PASS|FAIL|n/a) \| ' "$report")
[ "$targets" -eq 5 ] || fail "expected 5 target verdicts, got $targets"
# Images and work files live in the temporary directory and are removed.
if ls -d "$TMPD"/vhdnbd-bench.* >/dev/null 2>&1; then
  fail "bench/run left its work directory behind"
fi
