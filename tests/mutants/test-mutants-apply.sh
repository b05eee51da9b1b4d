#!/bin/bash
# Every planted bug in tests/mutants still applies to the tree, and names
# only tests this build has.  run-mutants.sh checks both too, but CI runs
# only a sample of the mutants; a change to the code around a mutant, or a
# renamed test, would otherwise go unnoticed until that mutant's turn.
. "$top_srcdir/tests/functions.sh"
requires patch
requires make

# The build's tests, from its Makefile.  MAKEFLAGS is cleared: it would
# carry a TESTS=... given to "make check" into this make.
known=$(cd "$top_builddir" && echo 'print-tests: ; @echo $(TESTS)' |
  MAKEFLAGS= MAKEOVERRIDES= make -s --no-print-directory -f Makefile -f - print-tests)
[ -n "$known" ] || fail "no TESTS in the build's Makefile"

n=0 bad=0
for m in "$top_srcdir"/tests/mutants/*.patch; do
  name=$(basename "$m" .patch)
  n=$((n + 1))
  tests=$(sed -n '1s/^# Caught by: *//p' "$m")
  if [ -z "$tests" ]; then
    echo "FAIL: $name: no '# Caught by:' first line" >&2
    bad=$((bad + 1))
    continue
  fi
  for t in $tests; do
    case " $known " in
    *" $t "*) ;;
    *) echo "FAIL: $name: names $t, which this build does not have" >&2; bad=$((bad + 1)) ;;
    esac
  done
  if ! out=$(patch -p1 --dry-run -s -d "$top_srcdir" <"$m" 2>&1); then
    echo "FAIL: $name: does not apply: $out" >&2
    bad=$((bad + 1))
  fi
done
[ "$n" -gt 0 ] || fail "no mutants found in $top_srcdir/tests/mutants"
[ "$bad" -eq 0 ] || fail "$bad problems with the $n mutants"
echo "ok: $n mutants apply and name known tests"
