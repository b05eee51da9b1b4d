#!/bin/bash
# Planted bugs the test suite must catch.  Each tests/mutants/NAME.patch is a
# small bug, applied with patch -p1 at the top of the tree, whose first line
# names the tests that must catch it:
#   # Caught by: tests/unit/test-foo tests/interop/test-bar.sh
# For each mutant this applies the patch to a scratch copy of the tree,
# rebuilds, runs the named tests and requires at least one of them to fail;
# then it reverts the patch.  A mutant that no test catches, that names tests
# the build does not have, or that does not apply or build, is reported and
# makes the run fail; so is one whose `make check` fails with no test failing.
#
# Usage: run-mutants.sh [--sample N] [--seed S] [--keep] [NAME...]
#   NAME...      run only these mutants (file names with or without .patch)
#   --sample N   run N mutants picked by --seed (default: the day of the year)
#   --keep       keep the scratch copy (under $MUTANTS_DIR)
# Environment: top_srcdir (default: this script's tree), MUTANTS_DIR (default
# $top_srcdir/build/mutants).
set -u

here=$(cd "$(dirname "$0")" && pwd)
top=${top_srcdir:-$(cd "$here/../.." && pwd)}
work=${MUTANTS_DIR:-$top/build/mutants}
sample=0 seed=$(date +%j) keep=no
names=()
while [ $# -gt 0 ]; do
  case "$1" in
  --sample) sample=$2; shift ;;
  --seed) seed=$2; shift ;;
  --keep) keep=yes ;;
  -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  -*) echo "run-mutants.sh: unknown option $1" >&2; exit 2 ;;
  *) names+=("${1%.patch}") ;;
  esac
  shift
done

mutants=()
if [ ${#names[@]} -gt 0 ]; then
  for n in "${names[@]}"; do
    n=${n##*/}
    [ -f "$here/$n.patch" ] || { echo "run-mutants.sh: no mutant $here/$n.patch" >&2; exit 2; }
    mutants+=("$here/$n.patch")
  done
else
  mapfile -t mutants < <(ls "$here"/*.patch 2>/dev/null | sort)
fi
[ ${#mutants[@]} -gt 0 ] || { echo "run-mutants.sh: no mutants in $here" >&2; exit 2; }
if [ "$sample" -gt 0 ] && [ "$sample" -lt ${#mutants[@]} ]; then
  # A different, reproducible handful each day: --seed picks them.
  mapfile -t mutants < <(printf '%s\n' "${mutants[@]}" |
    awk -v seed="$seed" 'BEGIN { srand(seed) } { print rand() "\t" $0 }' |
    sort -n | head -n "$sample" | cut -f2- | sort)
  echo "sample of ${#mutants[@]} mutants (seed $seed)"
fi

# A scratch copy of the tree as it is (committed or not), built once;
# each mutant then costs an incremental rebuild.
src="$work/src" build="$work/build"
rm -rf "$work" && mkdir -p "$src" "$build"
(cd "$top" && git ls-files -z --cached --others --exclude-standard 2>/dev/null |
  grep -zv '^build/' | xargs -0 cp --parents -t "$src") ||
  { echo "run-mutants.sh: cannot copy the tree (is $top a git checkout?)" >&2; exit 2; }
echo "=== building a scratch copy in $work"
(cd "$src" && autoreconf -fi >/dev/null 2>&1) || { echo "run-mutants.sh: autoreconf failed" >&2; exit 2; }
(cd "$build" && "$src/configure" -q --enable-werror >configure.out 2>&1 && make -j"$(nproc)" >make.out 2>&1) ||
  { tail -20 "$build/make.out" "$build/configure.out" 2>/dev/null; echo "run-mutants.sh: the unmutated tree does not build" >&2; exit 2; }

# The tests the build knows: a name outside them makes `make check` fail
# before any test runs, which must not count as the mutant caught.
known=$(echo 'print-tests: ; @echo $(TESTS)' |
  MAKEFLAGS= MAKEOVERRIDES= make -s --no-print-directory -C "$build" -f Makefile -f - print-tests)

caught=0 missed=()
for m in "${mutants[@]}"; do
  name=$(basename "$m" .patch)
  tests=$(sed -n '1s/^# Caught by: *//p' "$m")
  if [ -z "$tests" ]; then
    missed+=("$name: no '# Caught by:' line"); echo "MISSED: $name (no tests named)"; continue
  fi
  unknown=$(for t in $tests; do case " $known " in *" $t "*) ;; *) printf ' %s' "$t" ;; esac; done)
  if [ -n "$unknown" ]; then
    missed+=("$name: names tests the build does not have:$unknown")
    echo "MISSED: $name (no such tests:$unknown)"; continue
  fi
  if ! (cd "$src" && patch -p1 -s --no-backup-if-mismatch <"$m"); then
    missed+=("$name: does not apply"); echo "MISSED: $name (does not apply)"; continue
  fi
  log="$build/mutant-$name.log"
  if ! make -C "$build" -j"$(nproc)" >"$log" 2>&1; then
    verdict="does not build"
  elif make -C "$build" -j"$(nproc)" check TESTS="$tests" >>"$log" 2>&1; then
    verdict=missed
  elif grep -qE '^(FAIL|ERROR): ' "$log"; then
    verdict=caught
  else
    verdict="make check failed with no test failing"
  fi
  (cd "$src" && patch -p1 -R -s --no-backup-if-mismatch <"$m") || { echo "run-mutants.sh: cannot revert $name" >&2; exit 2; }
  case $verdict in
  caught)
    caught=$((caught + 1))
    echo "CAUGHT: $name by $(grep -E '^(FAIL|ERROR):' "$log" | sed 's/^[A-Z]*: //' | tr '\n' ' ')"
    ;;
  *)
    missed+=("$name: $verdict (tests: $tests; log: $log)")
    echo "MISSED: $name ($verdict)"
    ;;
  esac
done

[ "$keep" = yes ] || [ ${#missed[@]} -gt 0 ] || rm -rf "$work"
echo "$caught of ${#mutants[@]} mutants caught"
if [ ${#missed[@]} -gt 0 ]; then
  printf '  not caught: %s\n' "${missed[@]}"
  exit 1
fi
exit 0
