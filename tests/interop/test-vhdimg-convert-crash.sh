#!/bin/bash
# vhdimg convert stopped at every I/O point of its output (the fault switch:
# VHDNBD_FAULT_AFTER=N, power-cut mode: from the Nth write, truncate, sync,
# rename or unlink on, every one fails), for raw -> dynamic, raw -> fixed,
# dynamic -> fixed, a differencing chain -> dynamic and VHD -> raw, each
# with no DST and with an old DST.  After each stop: the source is
# unchanged, DST is absent, or the old DST unchanged, or complete and equal
# to the source; a temporary file left behind is one the failed run named.
# Then the second write failing once (ENOSPC), the first sync (EIO): a clear error,
# exit 1, the old DST kept and no temporary file left.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires_write_helper
cd "$TMPD"
mkdir out

# The sources: a raw disk of 768 KiB + 3 sectors, and the same as a dynamic
# image with 64 KiB blocks and as a chain of 3 (base <- mid <- top).
w=(0 4K 0x11  100K 64K 0x22  500K 3K 0x33  768K 1536 0x44)
make_raw src.raw 787968 "${w[@]}"
"$VHDIMG" create --exact --block-size 64K base.vhd 787968
"$WRITE_HELPER" base.vhd 0 4K 0x11 100K 64K 0x22
"$VHDIMG" create -b base.vhd mid.vhd
"$WRITE_HELPER" mid.vhd 500K 3K 0x33
"$VHDIMG" create -b mid.vhd top.vhd
"$WRITE_HELPER" top.vhd 768K 1536 0x44
cp base.vhd dyn.vhd
"$WRITE_HELPER" dyn.vhd 500K 3K 0x33 768K 1536 0x44
for f in src.raw base.vhd mid.vhd top.vhd dyn.vhd; do cp "$f" "$f.orig"; done
make_raw old.raw 4096 0 4K 0x5a

sources_unchanged() {
  local f
  for f in src.raw base.vhd mid.vhd top.vhd dyn.vhd; do
    cmp -s "$f" "$f.orig" || fail "$1: the source $f changed"
  done
}

# complete WHAT FMT: out/dst holds the source's disk.
complete() {
  if [ "$2" = raw ]; then
    cmp -s out/dst src.raw
  else
    "$VHDIMG" check out/dst >/dev/null 2>&1 &&
      rm -f got.raw && "$VHDIMG" convert out/dst got.raw && cmp -s got.raw src.raw
  fi
}

# crash_every_point NAME FMT OLD ARGS...: runs `vhdimg convert ARGS out/dst`
# stopped after N = 0, 1, ... I/O points until it succeeds.
crash_every_point() {
  local name=$1 fmt=$2 old=$3 n rc tmp left=0
  shift 3
  for ((n = 0; n < 400; n++)); do
    rm -rf out && mkdir out
    [ "$old" = yes ] && cp old.raw out/dst
    rc=0
    VHDNBD_FAULT_AFTER=$n "$VHDIMG" convert "$@" out/dst 2>err.out || rc=$?
    sources_unchanged "$name, stopped after $n"
    if [ $rc -eq 0 ]; then
      complete "$name" "$fmt" || fail "$name: the conversion that succeeded (at $n) is wrong"
      [ -z "$(ls -A out | grep -v '^dst$')" ] || fail "$name: success left $(ls -A out)"
      [ $n -gt 3 ] || fail "$name: succeeded after only $n I/O points: is the switch armed?"
      echo "$name (old DST: $old): $n I/O points, $left stops left a temporary file (reported)"
      return 0
    fi
    [ $rc -eq 1 ] || fail "$name, stopped after $n: exit $rc"
    if [ -e out/dst ] && ! { [ "$old" = yes ] && cmp -s out/dst old.raw; }; then
      complete "$name" "$fmt" || fail "$name, stopped after $n: DST is neither the old one nor complete"
    fi
    for tmp in $(ls -A out | grep -v '^dst$'); do
      [[ $tmp == .dst.?????? ]] || fail "$name, stopped after $n: unexpected file $tmp"
      left=$((left + 1))
      grep -q "out/.dst.*temporary file" err.out ||
        { cat err.out >&2; fail "$name, stopped after $n: $tmp left and not reported"; }
    done
  done
  fail "$name: still failing after $n I/O points"
}

for old in no yes; do
  crash_every_point "raw -> dynamic" dynamic $old -f raw -O dynamic --exact --block-size 64K src.raw
  crash_every_point "raw -> fixed" fixed $old -f raw -O fixed --exact src.raw
  crash_every_point "dynamic -> fixed" fixed $old -O fixed dyn.vhd
  crash_every_point "chain -> dynamic" dynamic $old -O dynamic --block-size 4K top.vhd
  crash_every_point "VHD -> raw" raw $old top.vhd
done

# A write that fails once with ENOSPC, a sync that fails once with EIO.
for fault in 1:write-once:ENOSPC:"No space left on device" 0:sync-once:EIO:"Input/output error"; do
  IFS=: read -r after mode errname text <<<"$fault"
  for fmt in raw dynamic; do
    rm -rf out && mkdir out && cp old.raw out/dst
    rc=0
    VHDNBD_FAULT_AFTER=$after VHDNBD_FAULT_MODE=$mode VHDNBD_FAULT_ERRNO=$errname \
      "$VHDIMG" convert -O $fmt top.vhd out/dst 2>err.out || rc=$?
    [ $rc -eq 1 ] || fail "$mode $errname, -O $fmt: exit $rc"
    grep -q "^vhdimg: .*out/.*$text" err.out || { cat err.out >&2; fail "$mode $errname, -O $fmt: no clear error"; }
    cmp -s out/dst old.raw || fail "$mode $errname, -O $fmt: the old DST changed"
    [ "$(ls -A out)" = dst ] || fail "$mode $errname, -O $fmt: left $(ls -A out)"
    sources_unchanged "$mode $errname"
  done
done
