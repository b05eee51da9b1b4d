#!/bin/bash
# bench/run --smoke runs every server on every image, over a Unix socket and
# over TCP, with the page cache warm and dropped, and prints a complete
# report: a number (latency percentiles included) in every table row, the
# round-trip floor, the floor table (one event loop and a thread per
# connection on every workload), the page-cache ceiling of 4k writes,
# memory with 1000 busy connections, open times, the layout cost, the
# plots, and a verdict line for every target at the end.  As root
# it drops the page cache (sync; echo 3 > /proc/sys/vm/drop_caches) before
# each TCP job on an image and each layout-cost job.
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

# Both transports; the TCP half with the page cache dropped when we may.
grep -q '^### Unix socket, page cache warm$' "$report" || fail "no Unix-socket table"
if [ -w /proc/sys/vm/drop_caches ]; then
  grep -q '^### TCP 127.0.0.1, page cache dropped before each job$' "$report" ||
    fail "no TCP table with the page cache dropped"
else
  echo "PARTIAL: not root: the page cache was not dropped, TCP measured warm only"
  grep -q '^### TCP 127.0.0.1, page cache warm$' "$report" || fail "no TCP table"
  grep -q '^- \*\*not measured with the page cache dropped\*\*' "$report" ||
    fail "the report does not say the page cache was not dropped"
fi
grep -q '^| workload | image | server | MiB/s | IOPS | p50 µs | p99 µs | server CPU s/GiB |' \
  "$report" || fail "the table header has no p50/p99 latency columns"

num='[0-9]+(\.[0-9]+)?'
row() { # WORKLOAD IMAGE SERVER [ratio columns expected: 0 none, 1 both, 2 nbdkit-raw only]
  local re="^\| $1 \| $2 \| $3 \| $num \| $num \| $num \| $num \| $num \| "
  case ${4:-0} in
  1) re+="$num \| $num \|$" ;;
  2) re+="— \| $num \|$" ;;
  esac
  local n
  n=$(grep -Ec "$re" "$report" || true)
  [ "$n" -eq 2 ] || fail "$n complete rows (of 2, one per condition) for $1 on $2 served by $3"
}
# vhdnbd rows carry both ratios where qemu-nbd can serve the image.
for img in alloc fixed; do
  row rr4k-qd1 "$img" vhdnbd 1
  row rr4k-qd1 "$img" qemu-nbd
done
row rr4k-qd1 diff vhdnbd 2
row rr4k-qd1 raw nbdkit-raw
row rr4k-qd1 null nbdkit-null
for wl in rr4k-qd1 rw4k-4conn; do
  row "$wl" raw loop-floor
  row "$wl" raw thread-floor
done
for img in empty alloc fixed; do
  row rw4k-4conn "$img" vhdnbd 1
  row rw4k-4conn "$img" qemu-nbd
done
row rw4k-4conn diff vhdnbd 2
row rw4k-4conn raw-sparse nbdkit-raw
row rw4k-4conn raw nbdkit-raw
# The page cache's own ceiling for 4k writes at depth: fio straight into
# the raw file, no server, so no server CPU and no ratios.
n=$(grep -Ec "^\| rw4k-4conn \| raw \| page-cache \| $num \| $num \| $num \| $num \| — \| — \| — \|$" "$report")
[ "$n" -eq 2 ] || fail "$n page-cache rows for rw4k-4conn (of 2, one per condition)"
rows=$(grep -Ec '^\| (rr4k|rw4k|sr1m|sw1m)[^|]* \| [a-z-]+ \|' "$report")
[ "$rows" -eq 42 ] || fail "expected 42 benchmark rows (21 per condition), got $rows"
n=$(grep -Ec "^Round-trip floor, rr4k-qd1: \`nbdkit null\` $num IOPS, p50 $num µs, p99 $num µs" "$report")
[ "$n" -eq 2 ] || fail "expected a round-trip floor line per condition, got $n"
n=$(grep -Ec '^Floors: `bench/loop-floor` serving the raw file .* one event loop .* a thread per connection' "$report")
[ "$n" -eq 2 ] || fail "expected a floor table per condition, got $n"
for wl in rr4k-qd1 rw4k-4conn; do
  n=$(grep -Ec "^\| $wl( \| $num){5} \| [a-z]+ $num( \| $num){2} \|$" "$report")
  [ "$n" -eq 2 ] || fail "$n complete floor-table rows for $wl (of 2, one per condition)"
done
n=$(grep -Ec "^Page-cache ceiling, rw4k-4conn (unix|tcp)/(warm|cold): fio .* $num IOPS; nbdkit-raw reaches $num% of it, vhdnbd's best row \([a-z]+\) $num%\.$" "$report")
[ "$n" -eq 2 ] || fail "expected a page-cache ceiling line per condition, got $n"

# The memory tables: 1 and 20 idle connections per server, 1000 busy ones.
for s in vhdnbd qemu-nbd nbdkit-raw; do
  for n in 1 20; do
    grep -Eq "^\| $s \| $n \| $num \| " "$report" || fail "no VmRSS for $s with $n idle connections"
  done
done
grep -Eq "^\| vhdnbd \| 1000 \| 4 \| $num \| $num \| $num \| $num \| [1-9][0-9]* \| [1-9][0-9]* \|$" \
  "$report" || fail "no memory figures for vhdnbd with 1000 busy connections:" \
  "$(grep -E "busy connections|^\| vhdnbd \| 1000 " "$TMPD/stderr" "$report")"
grep -Eq "^\| vhd_open \| $num \| $num \| $num \| $num \|$" "$report" || fail "no vhd_open timing"
grep -Eq "^\| vhdnbd start to greeting \| $num \| " "$report" || fail "no vhdnbd startup timing"

# Layout cost: the same data laid out four ways, cold (root only).
grep -q '^### Layout cost$' "$report" || fail "no layout-cost section"
if [ -w /proc/sys/vm/drop_caches ]; then
  for s in vhdnbd nbdkit-offset nbdkit-raw; do
    grep -Eq "^\| [^|]+ \| $s \| $num \| $num \|$" "$report" ||
      fail "no layout-cost row for $s"
  done
  n=$(grep -Ec "^\| [^|]+ \| (vhdnbd|nbdkit-offset|nbdkit-raw) \| $num \| $num \|$" "$report")
  [ "$n" -eq 4 ] || fail "expected 4 layout-cost rows, got $n"
else
  grep -q '^Not measured: cannot write /proc/sys/vm/drop_caches' "$report" ||
    fail "the report does not say why the layout cost was not measured"
fi
# The report ends with one verdict line per target, then the end marker.
verdict='(holds|does not hold|not measured) — '
for t in \
  "(a) every row ≥ 1.0× nbdkit-raw" \
  "(b) every row where qemu-nbd runs ≥ 2× qemu-nbd" \
  "(c) p99 at QD1 ≤ 1.2× nbdkit-raw's" \
  "(d) server CPU per GiB ≤ nbdkit-raw's" \
  "(e) RSS with 1000 active connections ≤ 64 MiB"; do
  n=$(grep -Fc -- "- target $t: " "$report" || true)
  [ "$n" -eq 1 ] || fail "$n lines for target $t"
done
tail -n 8 "$report" | head -n 5 | grep -Evq "^- target \([a-e]\) .*: $verdict" &&
  fail "the report does not end with the five target lines"
grep -Eq '^- target \(e\) .*: (holds|does not hold) — .* with 1000 connections, 4 reads in flight each \(.* KiB per connection\)$' \
  "$report" || fail "target (e) was not measured with 1000 busy connections"
tail -n 1 "$report" | grep -q '^<!-- END bench/run output -->$' || fail "no end marker"

# Plots: four SVG files beside the report, each linked from it.
if "$PY3" -c 'import matplotlib' 2>/dev/null; then
  for p in qd-iops qd-p99 conns-iops seq-mbps; do
    f=$TMPD/plots/$p.svg
    [ -s "$f" ] || fail "no plot $p.svg beside the report"
    "$PY3" -c 'import sys, xml.etree.ElementTree as E
root = E.parse(sys.argv[1]).getroot()
sys.exit(0 if root.tag == "{http://www.w3.org/2000/svg}svg" else 1)' "$f" ||
      fail "$p.svg is not a valid SVG document"
    grep -q "^!\[.*\](plots/$p.svg)$" "$report" || fail "the report does not link $p.svg"
  done
else
  echo "PARTIAL: python3-matplotlib is not installed: the plots were not checked"
  grep -q '^No plots: ' "$report" || fail "the report does not say why it has no plots"
fi

# Replacing the generated part of a file keeps what is around it.
printf 'hand-written before\n<!-- BEGIN bench/run output: generated, do not edit by hand -->\nold\n<!-- END bench/run output -->\nhand-written after\n' \
  >"$TMPD/results.md"
work=$TMPD/work
mkdir -p "$work"
: >"$work/results.tsv"
printf 'meta\tmode\tsmoke\n' >"$work/extra.tsv"
"$PY3" "$top_srcdir/bench/report.py" --workdir "$work" --output "$TMPD/results.md" >/dev/null
[ "$(head -n 1 "$TMPD/results.md")" = "hand-written before" ] &&
  [ "$(tail -n 1 "$TMPD/results.md")" = "hand-written after" ] &&
  ! grep -qx old "$TMPD/results.md" && grep -q '^- target (a) ' "$TMPD/results.md" ||
  fail "report.py --output did not replace only the generated part"

# Images and work files live in the temporary directory and are removed.
if ls -d "$TMPD"/vhdnbd-bench.* >/dev/null 2>&1; then
  fail "bench/run left its work directory behind"
fi

# bench/loop-floor's variants (-t: a thread per connection, -l 2: two
# loops, -s: READ data spliced into the socket), used by hand as
# yardsticks, serve the file's bytes: nbdcopy over 2 connections (one on
# each loop with -l 2) copies it exactly.
floor=$top_builddir/bench/loop-floor
[ -x "$floor" ] || fail "bench/run did not build $floor"
if command -v nbdcopy >/dev/null; then
  head -c $((4 * 1024 * 1024)) /dev/urandom >"$TMPD/floor.raw"
  for opts in "" -t "-l 2" -s "-t -s" "-l 2 -s"; do
    rm -f "$TMPD/floor.pid" "$TMPD/floor.copy"
    # shellcheck disable=SC2086
    "$floor" $opts -U "$TMPD/floor.sock" -P "$TMPD/floor.pid" "$TMPD/floor.raw" &
    fpid=$!
    cleanup_fn "kill $fpid 2>/dev/null"
    wait_for 30 "loop-floor $opts listening" test -s "$TMPD/floor.pid"
    nbdcopy --connections=2 "nbd+unix:///?socket=$TMPD/floor.sock" "$TMPD/floor.copy" ||
      fail "nbdcopy from loop-floor $opts failed"
    cmp -s "$TMPD/floor.raw" "$TMPD/floor.copy" || fail "loop-floor $opts served other bytes"
    kill "$fpid"
    wait "$fpid" 2>/dev/null || true
  done
fi
