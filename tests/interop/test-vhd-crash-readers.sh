#!/bin/bash
# The crash images of test-vhd-crash and test-vhd-crash-lost judged by
# readers other than our engine: a sample of them (every
# VHD_CRASH_SAMPLE_EVERY-th, default 6, of shorter workloads) is read with
# libvhdi and QEMU, which must agree with the model wherever it knows the
# content (see crash-readers.py and save_sample in test-vhd-crash.c).
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires_py pyvhdi

: "${VHD_TEST_ITERS:=750}"
: "${VHD_CRASH_SAMPLE_EVERY:=6}"
export VHD_TEST_ITERS VHD_CRASH_SAMPLE_EVERY
for prog in test-vhd-crash test-vhd-crash-lost; do
  [ -x "$top_builddir/$prog" ] || fail "$top_builddir/$prog is not built"
  mkdir "$TMPD/$prog"
  VHD_CRASH_SAMPLE_DIR="$TMPD/$prog" "$top_builddir/$prog" || fail "$prog failed"
  "$PY3" "$top_srcdir/tests/interop/crash-readers.py" "$TMPD/$prog" ||
    fail "$prog: another reader disagrees with the model on a crash image"
done
