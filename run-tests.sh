#!/bin/bash
# Installs what is missing and runs the whole test suite twice: a plain build
# (with -Werror, plus a valgrind pass over the engine and codec unit tests)
# and an ASan+UBSan build.  Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")"
top=$(pwd)

scripts/install-deps.sh --with-tests || exit 1
autoreconf -fi >/dev/null 2>&1 || { echo "autoreconf failed"; exit 1; }

jobs=$(nproc)
# Both builds share one cache of the kernel boot files.
export KTEST_CACHE="$top/build/ktest-cache"
status=0
run_build() { # name configure-args...
  local name=$1; shift
  local dir="$top/build/$name"
  rm -rf "$dir" && mkdir -p "$dir"
  echo "=== $name build: configure $*"
  (cd "$dir" && "$top/configure" -q "$@" >configure.out 2>&1) || { cat "$dir/configure.out"; return 1; }
  echo "=== $name build: make"
  (cd "$dir" && make -j"$jobs" >make.out 2>&1) || { tail -50 "$dir/make.out"; return 1; }
  echo "=== $name build: make check"
  (cd "$dir" && make -j"$jobs" check >check.out 2>&1)
  local rc=$?
  grep -E '^(PASS|FAIL|XFAIL|XPASS|SKIP|ERROR):' "$dir/check.out" | sed "s/^/[$name] /"
  if [ $rc -ne 0 ]; then
    for f in $(grep -lE '^:test-result: (FAIL|ERROR)' $(find "$dir" -name '*.trs') 2>/dev/null); do
      echo "----- ${f%.trs}.log"; tail -40 "${f%.trs}.log"
    done
  fi
  return $rc
}

run_build plain --enable-werror || status=1
if [ -d "$top/build/plain" ] && command -v valgrind >/dev/null; then
  echo "=== valgrind pass over the unit tests"
  (cd "$top/build/plain" && make -j"$jobs" check-valgrind >valgrind.out 2>&1)
  vrc=$?
  grep -E '^(PASS|FAIL|SKIP|ERROR):' "$top/build/plain/valgrind.out" | sed 's/^/[valgrind] /'
  [ $vrc -eq 0 ] || { tail -60 "$top/build/plain/valgrind.out"; status=1; }
fi
run_build sanitizers --enable-werror --enable-sanitizers || status=1

# The Debian package round trip installs and purges the package, so it runs
# here (as root) rather than under make check.
echo "=== Debian package round trip"
tests/package/test-deb-package.sh "$top" >"$top/build/deb-package.out" 2>&1
deb_rc=$?
case $deb_rc in
  0) echo "PASS: tests/package/test-deb-package.sh" ;;
  77) echo "SKIP: tests/package/test-deb-package.sh: $(sed -n 's/^SKIP: //p' "$top/build/deb-package.out")" ;;
  *) echo "FAIL: tests/package/test-deb-package.sh"; tail -40 "$top/build/deb-package.out" ;;
esac

pass=0; fail=0
for f in $(find "$top/build" -name '*.trs' 2>/dev/null); do
  r=$(sed -n 's/^:test-result: //p' "$f" | head -1)
  case "$r" in
    PASS|XFAIL) pass=$((pass + 1)) ;;
    FAIL|ERROR|XPASS) fail=$((fail + 1)) ;;
  esac
done
if [ -f "$top/build/plain/valgrind.out" ]; then
  pass=$((pass + $(grep -c '^PASS: .*(valgrind)' "$top/build/plain/valgrind.out")))
  fail=$((fail + $(grep -c '^FAIL: .*(valgrind)' "$top/build/plain/valgrind.out")))
fi
case $deb_rc in
  0) pass=$((pass + 1)) ;;
  77) ;;
  *) fail=$((fail + 1)) ;;
esac
[ $fail -eq 0 ] || status=1
echo "$pass passed, $fail failed"
exit $status
