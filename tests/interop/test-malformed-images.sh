#!/bin/bash
# A corpus of damaged images (built at test time by make-malformed.py from
# good ones): vhdimg info and check must refuse each with a message naming the
# field at fault, or open the recoverable one with a warning, and never crash.
# Under valgrind too when it is installed and the build is not sanitized.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires_write_helper
cd "$TMPD"
gen="$PY3 $top_srcdir/tests/interop/make-malformed.py"

"$VHDIMG" create good.vhd 10M
"$WRITE_HELPER" good.vhd 0 4K 0x11  2M 4K 0x22  4M 1M 0x33
"$VHDIMG" create -t fixed good-fixed.vhd 4M
"$VHDIMG" check good.vhd >/dev/null || fail "the good dynamic image does not check clean"
"$VHDIMG" check good-fixed.vhd >/dev/null || fail "the good fixed image does not check clean"
mkdir corpus
$gen corpus good.vhd good-fixed.vhd corpus >manifest

# Differencing children whose parent is missing, or has another UUID.  Each
# pair lives in its own directory so no locator can reach a good parent.
mkdir corpus/parent-missing corpus/parent-uuid
for d in parent-missing parent-uuid; do
  "$VHDIMG" create corpus/$d/base.vhd 10M
  "$VHDIMG" create -b corpus/$d/base.vhd corpus/$d/child.vhd
done
rm corpus/parent-missing/base.vhd
$gen set-uuid corpus/parent-uuid/base.vhd
printf '%s\tfail\t%s\n' >>manifest \
  parent-missing/child.vhd 'parent.*(not found|missing|no such)' \
  parent-uuid/child.vhd '(unique id|uuid).*(differ|mismatch|match)|(differ|mismatch).*(unique id|uuid)'

valgrind=()
if command -v valgrind >/dev/null 2>&1 && ! nm "$VHDIMG" 2>/dev/null | grep -q __asan_init; then
  valgrind=(valgrind --error-exitcode=99 -q --leak-check=full --errors-for-leak-kinds=definite)
fi

# run_case OUT CMD...: runs CMD, output to OUT; returns its exit status after
# failing the test on a crash or a sanitizer report.
run_case() {
  local out=$1 rc=0
  shift
  timeout 60 "$@" >"$out" 2>&1 || rc=$?
  if [ $rc -ge 128 ] || [ $rc -eq 124 ]; then
    cat "$out" >&2
    fail "crashed or hung (exit $rc): $*"
  fi
  if grep -Eq 'AddressSanitizer|runtime error|LeakSanitizer' "$out"; then
    cat "$out" >&2
    fail "sanitizer report: $*"
  fi
  return $rc
}

# expect_named OUT PATTERNS IMAGE: every ;-separated regex matches the output.
expect_named() {
  local out=$1 patterns=$2 img=$3 re
  local -a res
  IFS=';' read -ra res <<<"$patterns"
  for re in "${res[@]}"; do
    grep -Eiq -- "$re" "$out" || {
      cat "$out" >&2
      fail "$img: the message does not name the field (/$re/)"
    }
  done
}

# check_image IMAGE EXPECT PATTERNS
check_image() {
  local img=$1 expect=$2 patterns=$3 rc=0 crc=0
  run_case info.out "$VHDIMG" info corpus/$img || rc=$?
  run_case check.out "$VHDIMG" check corpus/$img || crc=$?
  case $expect in
    fail)
      [ $rc -ne 0 ] || { cat info.out >&2; fail "$img: vhdimg info accepted it"; }
      [ $crc -ne 0 ] || { cat check.out >&2; fail "$img: vhdimg check found nothing"; }
      expect_named info.out "$patterns" "$img (info)"
      expect_named check.out "$patterns" "$img (check)"
      ;;
    warn)
      [ $rc -eq 0 ] || { cat info.out >&2; fail "$img: vhdimg info refused a recoverable image"; }
      grep -qi warning info.out || { cat info.out >&2; fail "$img: no warning"; }
      expect_named info.out "$patterns" "$img (info)"
      [ $crc -eq 1 ] || [ $crc -eq 3 ] ||
        { cat check.out >&2; fail "$img: check exit $crc, expected 1 or 3"; }
      expect_named check.out "$patterns" "$img (check)"
      ;;
  esac
}

cases=0
while IFS=$'\t' read -r img expect patterns; do
  cases=$((cases + 1))
  check_image "$img" "$expect" "$patterns"
done <manifest

# The corpus under valgrind, two runs at a time: only memory errors (exit 99)
# and crashes matter here, the verdicts were checked above.  `check` opens
# and validates like `info` does, and more; `info` itself runs where its own
# code differs (the recoverable image, the children without their parent).
if [ ${#valgrind[@]} -gt 0 ]; then
  mkdir vg
  i=0
  while IFS=$'\t' read -r img expect patterns; do
    cmds=check
    [ $expect = warn ] || [[ $img = */* ]] && cmds="info check"
    for cmd in $cmds; do
      i=$((i + 1))
      (rc=0; timeout 60 "${valgrind[@]}" "$VHDIMG" $cmd corpus/$img </dev/null >vg/$i.out 2>&1 || rc=$?
       echo "$rc $cmd $img" >vg/$i.rc) &
      while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n || true; done
    done
  done <manifest
  wait
  for ((j = 1; j <= i; j++)); do
    read -r rc cmd img <vg/$j.rc
    if [ "$rc" -eq 99 ] || [ "$rc" -ge 124 ] || grep -q '^==[0-9]*==' vg/$j.out; then
      cat vg/$j.out >&2
      fail "valgrind: vhdimg $cmd $img (exit $rc)"
    fi
  done
fi
[ $cases -ge 25 ] || fail "only $cases cases in the corpus"

# The differencing child with a missing parent is still shown.
"$VHDIMG" info corpus/parent-missing/child.vhd >info.out 2>&1 && fail "info accepted a missing parent"
grep -q 'type: differencing' info.out || { cat info.out >&2; fail "info hid the child when its parent is missing"; }

# The recoverable image is repaired.
cp corpus/footer-trailing-checksum.vhd repair.vhd
"$VHDIMG" check --repair repair.vhd >check.out 2>&1 || { cat check.out >&2; fail "check --repair did not fix the trailing footer"; }
"$VHDIMG" info repair.vhd >info.out 2>&1 || fail "info after repair"
! grep -qi warning info.out || { cat info.out >&2; fail "still a warning after repair"; }
"$VHDIMG" convert repair.vhd repaired.raw
"$VHDIMG" convert good.vhd good.raw
cmp repaired.raw good.raw || fail "repairing the footer changed the content"
