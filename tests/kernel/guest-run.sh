# Boots the kernel test's guest under qemu, choosing the accelerator the host
# really offers.  Source it, then call
#   ktest_run_guest KERNEL INITRD CONSOLE QEMULOG APPEND
# which sets guest_accel (kvm or tcg) and guest_rc (qemu's exit status).
#
# KTEST_ACCEL selects the accelerator: unset means kvm when KVM works and tcg
# otherwise; "kvm" or "tcg" force one (no fallback); set but empty means tcg,
# as on a host without KVM.  KTEST_KVM_DEV names the KVM device (default
# /dev/kvm).  KTEST_TIMEOUT bounds each boot in seconds (default 270).
#
# Why a fallback: a /dev/kvm that exists and is writable does not mean KVM
# works.  Under nested virtualisation the outer hypervisor may refuse MSRs or
# CPU features that qemu asks for, and qemu then aborts before the guest runs
# ("failed to set MSR 0x10a"); "-cpu host" asks only for what the host has,
# and when even that fails, TCG still runs the same guest, only slower.

ktest_note() { echo "[${SECONDS}s] $*"; }

# Prints why KVM cannot be used, or nothing when it looks usable.
ktest_kvm_unusable() {
  local dev=${KTEST_KVM_DEV:-/dev/kvm}
  if [ ! -e "$dev" ]; then
    echo "$dev does not exist"
  elif [ ! -r "$dev" ] || [ ! -w "$dev" ]; then
    echo "$dev is not readable and writable by uid $(id -u)"
  fi
}

ktest_run_guest() { # KERNEL INITRD CONSOLE QEMULOG APPEND
  local kernel=$1 initrd=$2 console=$3 qlog=$4 append=$5
  local accels accel cpu why start
  if [ -z "${KTEST_ACCEL+set}" ]; then
    why=$(ktest_kvm_unusable)
    if [ -z "$why" ]; then
      accels="kvm tcg"
    else
      ktest_note "KVM not used: $why; the guest runs under TCG"
      accels=tcg
    fi
  else
    case "$KTEST_ACCEL" in
    kvm) accels=kvm ;;
    tcg | "") accels=tcg ;;
    *)
      echo "KTEST_ACCEL=$KTEST_ACCEL: expected kvm, tcg or empty" >&2
      guest_accel=none guest_rc=2
      return 0
      ;;
    esac
  fi

  for accel in $accels; do
    cpu=max
    [ "$accel" = kvm ] && cpu=host
    : >"$console"
    start=$(date +%s)
    ktest_note "booting the guest under $accel (-cpu $cpu)"
    set +e
    timeout -k 5 "${KTEST_TIMEOUT:-270}" qemu-system-x86_64 \
      -nodefaults -machine "pc,accel=$accel" -cpu "$cpu" -m 512 -smp 2 \
      -display none -monitor none -serial "file:$console" -no-reboot \
      -kernel "$kernel" -initrd "$initrd" \
      -append "$append" \
      -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
      </dev/null >"$qlog" 2>&1
    guest_rc=$?
    set -e
    guest_accel=$accel
    ktest_note "guest ran $(($(date +%s) - start)) s under $accel, qemu exit status $guest_rc"
    # A guest that printed nothing of ours never reached its init: KVM
    # refused to run it.  Anything later is the guest's own result.
    if [ "$accel" = kvm ] && [ "$accels" != kvm ] && [ "$guest_rc" != 0 ] &&
      ! grep -q 'KTEST:' "$console" 2>/dev/null; then
      ktest_note "KVM failed to start the guest (qemu exit status $guest_rc: $(head -c 300 "$qlog" | tr '\n' ' ')); falling back to TCG"
      mv "$qlog" "$qlog.kvm"
      continue
    fi
    break
  done
  return 0
}
