#!/bin/bash
# The protocol tests again, every server of theirs started with --loops 3
# (VHDNBD_TEST_ARGS): the clients they drive are then served by loops
# other than the main one, which must answer exactly as it does (under
# ASan and UBSan in the sanitizer build).  Left out: the tests whose
# expectations are one loop's by design (whether a WRITE payload is
# spliced depends on the other clients of its loop), and those that start
# no server through the test helpers.
. "$top_srcdir/tests/functions.sh"

export VHDNBD_TEST_ARGS="--loops 3"
programs="test-handshake test-structured-reads test-block-status test-errors test-write-zeroes
  test-multi-conn test-pipelining test-client-vanish test-shutdown test-limits test-sub-sector
  test-differencing test-io-errors test-flush-error test-error-messages test-extended-headers"
scripts="test-nbdcopy.sh test-qemu-io-nbd.sh test-fio-nbd.sh test-splice-reads.sh
  test-spliced-reply-framing.sh test-direct-replies.sh test-max-inflight.sh test-idle-timeout.sh
  test-reload.sh"
failed=() ran=0
# run NAME COMMAND...: one test, its output kept apart.
run() {
  local name=$1 rc
  shift
  "$@" >"$TMPD/$name.log" 2>&1
  rc=$?
  case $rc in
  0) echo "ok: $name"; ran=$((ran + 1)) ;;
  77) echo "skipped: $name: $(grep -m1 -i skip "$TMPD/$name.log")" ;;
  *) echo "FAILED: $name (exit $rc)"; tail -15 "$TMPD/$name.log"; failed+=("$name") ;;
  esac
}
for p in $programs; do
  [ -x "$top_builddir/tests/server/$p" ] || fail "$p is not built"
  run "$p" "$top_builddir/tests/server/$p"
done
for s in $scripts; do
  run "$s" bash "$top_srcdir/tests/interop/$s"
done
[ ${#failed[@]} -eq 0 ] || fail "served from three event loops, ${#failed[@]} failed: ${failed[*]}"
if [ "$ran" -eq 0 ]; then
  echo "SKIP: none of the protocol tests could run here" >&2
  exit 77
fi
echo "PASS: $ran protocol tests served from three event loops"
