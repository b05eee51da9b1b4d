#!/bin/bash
# Installs what is missing and runs the whole test suite: a plain build (with
# -Werror, plus a valgrind pass over the unit tests), an ASan+UBSan build, the
# Debian package round trip, and a sample of planted bugs that must be caught.  Builds go under build/ (out of tree), so
# this works in any checkout, before or after ./quickstart.sh, any number of
# times.  Lists every skipped test with its reason, and what passing tests
# could not test on this host (their "PARTIAL:" lines), and ends with
# "N passed, N failed, N skipped"; a build that fails counts as a failure and
# is named with its reason.  Exits non-zero unless everything passed.
set -u
cd "$(dirname "$0")"
top=$(pwd)

scripts/install-deps.sh --with-tests || { echo "installing the test dependencies failed"; echo "0 passed, 1 failed, 0 skipped"; exit 1; }
out=$(autoreconf -fi 2>&1) || {
  echo "$out"; echo "autoreconf failed"; echo "0 passed, 1 failed, 0 skipped"; exit 1
}

# A tree configured in place (by hand, or by an older quickstart) makes every
# out-of-tree configure refuse to run.
if [ -f "$top/config.status" ]; then
  echo "=== the source tree is configured in place; make distclean there first"
  make -C "$top" distclean >/dev/null 2>&1 || rm -f "$top/config.status" "$top/Makefile" "$top/config.h"
fi

jobs=$(nproc)
# Both builds share one cache of the kernel boot files.
export KTEST_CACHE="$top/build/ktest-cache"
build_failures=()   # "name: step (reason)" for each build that could not run its tests
extra_pass=0 extra_fail=0 extra_skip=0
extra_skips=()

run_build() { # name configure-args...
  local name=$1; shift
  local dir="$top/build/$name"
  rm -rf "$dir" && mkdir -p "$dir"
  echo "=== $name build: configure $*"
  if ! (cd "$dir" && "$top/configure" -q "$@" >configure.out 2>&1); then
    tail -20 "$dir/configure.out"
    build_failures+=("$name build: configure failed: $(grep -m1 'error:' "$dir/configure.out" || tail -1 "$dir/configure.out")")
    return 1
  fi
  echo "=== $name build: make"
  if ! (cd "$dir" && make -j"$jobs" >make.out 2>&1); then
    tail -50 "$dir/make.out"
    build_failures+=("$name build: make failed: $(grep -m1 -E 'error|Error' "$dir/make.out" || tail -1 "$dir/make.out")")
    return 1
  fi
  echo "=== $name build: make check"
  (cd "$dir" && make -j"$jobs" check >check.out 2>&1)
  local rc=$?
  grep -E '^(PASS|FAIL|XFAIL|XPASS|SKIP|ERROR):' "$dir/check.out" | sed "s/^/[$name] /"
  if [ $rc -ne 0 ]; then
    for f in $(grep -lE '^:test-result: (FAIL|ERROR)' $(find "$dir" -name '*.trs') 2>/dev/null); do
      echo "----- ${f%.trs}.log"; tail -40 "${f%.trs}.log"
    done
    # A make check that failed without any failing test failed elsewhere
    # (building a test program, say).
    if ! grep -qE '^(FAIL|ERROR):' "$dir/check.out"; then
      tail -30 "$dir/check.out"
      build_failures+=("$name build: make check failed outside the tests: $(grep -m1 -E 'error|Error' "$dir/check.out" || tail -1 "$dir/check.out")")
    fi
  fi
  return $rc
}

run_build plain --enable-werror
if [ -f "$top/build/plain/vhdnbd" ] && command -v valgrind >/dev/null; then
  echo "=== valgrind pass over the unit tests"
  (cd "$top/build/plain" && make -j"$jobs" check-valgrind >valgrind.out 2>&1)
  vrc=$?
  grep -E '^(PASS|FAIL|SKIP|ERROR):' "$top/build/plain/valgrind.out" | sed 's/^/[valgrind] /'
  if [ $vrc -ne 0 ]; then
    tail -60 "$top/build/plain/valgrind.out"
    grep -q '^FAIL: .*(valgrind)' "$top/build/plain/valgrind.out" ||
      build_failures+=("valgrind pass: make check-valgrind failed: $(tail -1 "$top/build/plain/valgrind.out")")
  fi
elif ! command -v valgrind >/dev/null; then
  extra_skip=$((extra_skip + 1)); extra_skips+=("valgrind pass over the unit tests: valgrind is not installed")
fi
run_build sanitizers --enable-werror --enable-sanitizers

# Built from a clean clone of the committed tree, installed, checked, purged:
# it installs and purges the package, so it runs here (as root) rather than
# under make check.
pkgtest="$top/tests/package/test-deb-package.sh"
if [ -f "$pkgtest" ]; then
  echo "=== Debian package round trip"
  bash "$pkgtest" "$top" >"$top/build/package.log" 2>&1
  prc=$?
  case $prc in
  0) echo "[package] PASS: $pkgtest"; extra_pass=$((extra_pass + 1)) ;;
  77) echo "[package] SKIP: $pkgtest"; extra_skip=$((extra_skip + 1))
      extra_skips+=("[package] Debian package round trip: $(sed -n 's/^SKIP: //p' "$top/build/package.log" | head -1)") ;;
  *) echo "[package] FAIL: $pkgtest"; tail -40 "$top/build/package.log"; extra_fail=$((extra_fail + 1)) ;;
  esac
fi

# A daily sample of the planted bugs: each must make one of its tests fail.
echo "=== a sample of planted bugs (tests/mutants; all of them: make check-mutants)"
MUTANTS_DIR="$top/build/mutants" bash "$top/tests/mutants/run-mutants.sh" \
  --sample "${MUTANT_SAMPLE:-3}" >"$top/build/mutants.log" 2>&1
mrc=$?
grep -E '^(CAUGHT|MISSED|sample)' "$top/build/mutants.log" | sed 's/^/[mutants] /'
extra_pass=$((extra_pass + $(grep -c '^CAUGHT:' "$top/build/mutants.log")))
extra_fail=$((extra_fail + $(grep -c '^MISSED:' "$top/build/mutants.log")))
if [ $mrc -ne 0 ] && ! grep -q '^MISSED:' "$top/build/mutants.log"; then
  tail -20 "$top/build/mutants.log"
  build_failures+=("mutant sample: $(tail -1 "$top/build/mutants.log")")
fi

pass=$extra_pass; fail=$extra_fail; skip=$extra_skip
skips=("${extra_skips[@]+"${extra_skips[@]}"}")
for name in plain sanitizers; do
  for f in $(find "$top/build/$name" -name '*.trs' 2>/dev/null | sort); do
    r=$(sed -n 's/^:test-result: //p' "$f" | head -1)
    case "$r" in
      PASS|XFAIL) pass=$((pass + 1)) ;;
      FAIL|ERROR|XPASS) fail=$((fail + 1)) ;;
      SKIP)
        skip=$((skip + 1))
        log="${f%.trs}.log"
        why=$(grep -m1 -E 'SKIP|skip' "$log" 2>/dev/null || tail -1 "$log" 2>/dev/null)
        skips+=("[$name] ${f#"$top/build/$name/"}: ${why:-no reason given}")
        ;;
    esac
  done
done
if [ -f "$top/build/plain/valgrind.out" ]; then
  pass=$((pass + $(grep -c '^PASS: .*(valgrind)' "$top/build/plain/valgrind.out")))
  fail=$((fail + $(grep -c '^FAIL: .*(valgrind)' "$top/build/plain/valgrind.out")))
fi

if [ ${#skips[@]} -gt 0 ]; then
  echo "=== skipped, with the reason each gave"
  printf '  %s\n' "${skips[@]}"
fi
# Tests that passed but left a part out because the host lacks something
# say so on a line "PARTIAL: what was not tested".
partial=$(for name in plain sanitizers; do
  for f in $(find "$top/build/$name" -name '*.trs' 2>/dev/null | sort); do
    t=${f#"$top/build/$name/"}
    grep -h '^PARTIAL: ' "${f%.trs}.log" 2>/dev/null | sort -u | sed "s|^PARTIAL: |[$name] ${t%.trs}: |"
  done
done)
if [ -n "$partial" ]; then
  echo "=== passed, but in part only (what the host could not test)"
  printf '%s\n' "$partial" | sed 's/^/  /'
fi
if [ ${#build_failures[@]} -gt 0 ]; then
  echo "=== builds that failed (each counts as one failure)"
  printf '  %s\n' "${build_failures[@]}"
  fail=$((fail + ${#build_failures[@]}))
fi
if [ $((pass + fail)) -eq 0 ]; then
  echo "no test ran"
  fail=1
fi
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
