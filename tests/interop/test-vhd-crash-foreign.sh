#!/bin/bash
# The crash workloads of test-vhd-crash and test-vhd-crash-lost (faults
# injected at every write and sync, failed syncs losing pages, power cuts
# dropping unsynced writes) run on images other writers laid out, not only
# on the engine's own: Windows/Hyper-V, XenServer, Xen Orchestra, blktap
# (with its batmap) and VirtualBox layouts from make-foreign-vhd.py, and
# QEMU's own files: dynamic and fixed, one cut inside its trailing footer
# (the copy at 0 stands in), one fixed with the 511-byte footer of Virtual
# PC before 2004.  After every crash each image must open, check clean of
# anything its writer did not leave, and read every byte as acknowledged.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires qemu-io

dir=$TMPD/fx
"$PY3" "$top_srcdir/tests/interop/make-foreign-vhd.py" "$dir" >/dev/null || fail "make-foreign-vhd.py"

qemu_image() { # NAME SUBFORMAT WRITES...
  local name=$1 sub=$2
  shift 2
  qemu-img create -q -f vpc -o subformat="$sub" "$dir/$name.vhd" 3M || fail "qemu-img create $name"
  local w
  for w in "$@"; do
    qemu-io -f vpc -c "write -P $w" "$dir/$name.vhd" >/dev/null || fail "qemu-io $name: $w"
  done
}
# Writes inside a block, across a block boundary (2 MiB) and at the end.
qemu_image qemu-dyn dynamic "0x5a 4096 1536" "0xa5 2093056 12288" "0x3c 3000000 4096"
qemu_image qemu-fixed fixed "0x5a 4096 1536" "0x3c 3000000 4096"
cp "$dir/qemu-dyn.vhd" "$dir/qemu-cut.vhd"
truncate -s -300 "$dir/qemu-cut.vhd"
cp "$dir/qemu-fixed.vhd" "$dir/qemu-short.vhd"
truncate -s -1 "$dir/qemu-short.vhd"
for name in qemu-dyn qemu-fixed qemu-cut qemu-short; do
  qemu-img convert -q -f vpc -O raw "$dir/$name.vhd" "$dir/$name.raw" ||
    fail "QEMU cannot read $name.vhd"
done
cat >>"$dir/manifest" <<EOF
qemu-dyn dynamic 2097152 - - qemu - - - -
qemu-fixed fixed 2097152 - - qemu - - - -
qemu-cut dynamic 2097152 - - qemu - - - -
qemu-short fixed 2097152 - - qemu - - - -
EOF

# Shorter workloads under ASan, which runs them several times slower (the
# cost grows with the square of the length).
if nm "$top_builddir/test-vhd-crash" 2>/dev/null | grep -q __asan_init; then
  : "${VHD_TEST_ITERS:=120}"
else
  : "${VHD_TEST_ITERS:=300}"
fi
export VHD_TEST_ITERS VHD_CRASH_FOREIGN=$dir VHD_CRASH_ONLY_FOREIGN=1
for prog in test-vhd-crash test-vhd-crash-lost; do
  [ -x "$top_builddir/$prog" ] || fail "$top_builddir/$prog is not built"
  "$top_builddir/$prog" >"$TMPD/$prog.out" 2>&1 ||
    fail "$prog on other writers' images: $(tail -30 "$TMPD/$prog.out")"
  grep -q "^ok 30 images other writers laid out" "$TMPD/$prog.out" ||
    fail "$prog did not run every image: $(tail -5 "$TMPD/$prog.out")"
done
echo "PASS: 30 images of other writers survive every crash point"
