#!/bin/bash
# The kernel test's choice of accelerator (guest-run.sh), against a stand-in
# for qemu-system-x86_64 first on PATH that behaves like qemu on each kind of
# host: KVM that works, KVM that refuses the guest (as nested virtualisation
# can: "failed to set MSR", abort), and no KVM at all.  The stand-in records
# its arguments and, when it "boots", writes the guest's console lines.
# No real guest runs here; test-kernel-nbd.sh boots the real one.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/kernel/guest-run.sh"

requires timeout

mkdir -p "$TMPD/bin"
cat >"$TMPD/bin/qemu-system-x86_64" <<'FAKE'
#!/bin/bash
# FAKE_KVM=ok|abort decides what happens under accel=kvm.
echo "$*" >>"$FAKE_ARGS"
console= accel=
while [ $# -gt 0 ]; do
  case "$1" in
  -serial) console=${2#file:}; shift ;;
  -machine) accel=${2#*accel=}; shift ;;
  esac
  shift
done
if [ "$accel" = kvm ] && [ "$FAKE_KVM" = abort ]; then
  echo "error: failed to set MSR 0x10a to 0x69" >&2
  echo "qemu-system-x86_64: kvm_buf_set_msrs: Assertion failed." >&2
  exit 134
fi
printf 'KTEST: PASS modules at 1\r\nKTEST: ALL PASSED\r\nKTEST: END\r\n' >"$console"
exit 0
FAKE
chmod +x "$TMPD/bin/qemu-system-x86_64"
PATH="$TMPD/bin:$PATH"
export FAKE_ARGS="$TMPD/args"
touch "$TMPD/kvm"

run() { # NAME: boots once and leaves the output in $TMPD/NAME.out
  rm -f "$FAKE_ARGS"
  ktest_run_guest kernel initrd "$TMPD/console" "$TMPD/qemu.log" "console=ttyS0" >"$TMPD/$1.out"
  cat "$TMPD/$1.out"
}
boots() { [ -f "$FAKE_ARGS" ] && wc -l <"$FAKE_ARGS" || echo 0; }

# A working KVM: one boot, under KVM, with the host's CPU model.
unset KTEST_ACCEL
export KTEST_KVM_DEV="$TMPD/kvm" FAKE_KVM=ok
run kvm-ok
[ "$guest_accel" = kvm ] && [ "$guest_rc" = 0 ] || fail "working KVM: ran under $guest_accel, status $guest_rc"
[ "$(boots)" = 1 ] || fail "working KVM: qemu started $(boots) times"
grep -q 'accel=kvm -cpu host ' "$FAKE_ARGS" || fail "working KVM: not started with -cpu host: $(cat "$FAKE_ARGS")"

# KVM present but refusing the guest: falls back to TCG and says so.
FAKE_KVM=abort
run kvm-broken
[ "$guest_accel" = tcg ] && [ "$guest_rc" = 0 ] || fail "broken KVM: ran under $guest_accel, status $guest_rc"
[ "$(boots)" = 2 ] || fail "broken KVM: qemu started $(boots) times, expected a KVM try then TCG"
sed -n 1p "$FAKE_ARGS" | grep -q 'accel=kvm -cpu host ' || fail "broken KVM: first try was not KVM with -cpu host"
sed -n 2p "$FAKE_ARGS" | grep -q 'accel=tcg -cpu max ' || fail "broken KVM: second try was not TCG with -cpu max"
grep -q 'falling back to TCG' "$TMPD/kvm-broken.out" || fail "broken KVM: the log does not say it fell back"
grep -q 'failed to set MSR' "$TMPD/kvm-broken.out" || fail "broken KVM: the log does not quote qemu's error"
grep -q 'guest ran .* under tcg' "$TMPD/kvm-broken.out" || fail "broken KVM: the log does not say TCG ran"
[ -f "$TMPD/qemu.log.kvm" ] || fail "broken KVM: qemu's output of the KVM try was not kept"

# No KVM device: TCG only, and the reason is logged.
KTEST_KVM_DEV="$TMPD/no-such-kvm"
run no-kvm
[ "$guest_accel" = tcg ] && [ "$(boots)" = 1 ] || fail "no KVM: ran under $guest_accel, $(boots) boots"
grep -q 'no-such-kvm does not exist' "$TMPD/no-kvm.out" || fail "no KVM: the reason is not logged"

# KTEST_ACCEL= simulates a host without KVM even when KVM works.
KTEST_KVM_DEV="$TMPD/kvm" FAKE_KVM=ok KTEST_ACCEL=
run accel-empty
[ "$guest_accel" = tcg ] && [ "$(boots)" = 1 ] || fail "KTEST_ACCEL=: ran under $guest_accel, $(boots) boots"

# KTEST_ACCEL=kvm forces KVM: a refusal is the result, not a fallback.
FAKE_KVM=abort KTEST_ACCEL=kvm
run accel-kvm
[ "$guest_accel" = kvm ] && [ "$guest_rc" = 134 ] && [ "$(boots)" = 1 ] ||
  fail "KTEST_ACCEL=kvm: ran under $guest_accel, status $guest_rc, $(boots) boots"
echo PASS
