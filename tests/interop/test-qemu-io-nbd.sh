#!/bin/bash
# qemu-io over NBD: pattern writes and verified reads, aligned and unaligned,
# write-zeroes (with and without unmap), discard, flush and FUA, on a dynamic
# image and a differencing child.  The images must then be check-clean and
# hold exactly the expected bytes; the parent must not change.
. "$top_srcdir/tests/functions.sh"
requires qemu-io
requires qemu-img
requires sha256sum

sock=$TMPD/sock
uri="nbd+unix:///?socket=$sock"
size=$((16 * 1024 * 1024))

# qemu-io reports failed commands and pattern mismatches on stdout but may
# still exit 0: treat either as a failure.
qio() {
  local out rc=0
  out=$(qemu-io -f raw "$@" "$uri" 2>&1) || rc=$?
  echo "$out"
  if [ "$rc" -ne 0 ] || grep -Eqi 'verification failed|error|fail|not supported' <<<"$out"; then
    fail "qemu-io $* (status $rc)"
  fi
}

# The same operations applied to a raw model with Python.
model() {
  "$PY3" - "$@" <<'EOF'
import sys
path, ops = sys.argv[1], sys.argv[2:]
with open(path, "r+b") as f:
    for op in ops:
        kind, off, length, *val = op.split(":")
        off, length = int(off), int(length)
        f.seek(off)
        f.write(bytes([int(val[0], 0) if val else 0]) * length)
EOF
}

run_workload() {
  local base=$1 # pattern byte of the base content (0 when empty)
  qio -c "write -P 0xab 0 64k" -c "read -P 0xab 0 64k"
  qio -c "write -P 0x11 1000 3333" -c "read -P 0x11 1000 3333" \
      -c "read -P 0xab 0 1000" -c "read -P 0xab 4333 61203"
  qio -c "write -P 0x22 $((2 * 1024 * 1024 - 100)) 300" \
      -c "read -P 0x22 $((2 * 1024 * 1024 - 100)) 300"
  qio -c "write -z 8k 4k" -c "read -P 0 8k 4k" -c "read -P 0xab 12k 4k"
  qio -c "write -z -u 4m 2m" -c "read -P 0 4m 2m"
  qio -c "write -z 6m 100" -c "read -P 0 6m 100" -c "read -P $base $((6 * 1024 * 1024 + 100)) 412"
  qio -c "write -f -P 0x33 7m 4k" -c "flush" -c "read -P 0x33 7m 4k"
  qio -c "discard 10m 2m" -c "write -P 0x44 10m 2m" -c "read -P 0x44 10m 2m"
  qio -c "write -P 0x55 $((size - 513)) 513" -c "read -P 0x55 $((size - 513)) 513"
  qio -c "aio_write -P 0x66 13m 64k" -c "aio_write -P 0x77 14m 64k" -c "aio_flush" \
      -c "read -P 0x66 13m 64k" -c "read -P 0x77 14m 64k"
  model "$2" "w:0:65536:0xab" "w:1000:3333:0x11" "w:$((2 * 1024 * 1024 - 100)):300:0x22" \
    "z:8192:4096" "z:$((4 * 1024 * 1024)):$((2 * 1024 * 1024))" \
    "z:$((6 * 1024 * 1024)):100" "w:$((7 * 1024 * 1024)):4096:0x33" \
    "w:$((10 * 1024 * 1024)):$((2 * 1024 * 1024)):0x44" "w:$((size - 513)):513:0x55" \
    "w:$((13 * 1024 * 1024)):65536:0x66" "w:$((14 * 1024 * 1024)):65536:0x77"
}

# --- dynamic image ---------------------------------------------------------
qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$TMPD/dyn.vhd" "$size"
truncate -s "$size" "$TMPD/expected.raw"
start_vhdnbd "$sock" "$TMPD/dyn.vhd"
run_workload 0 "$TMPD/expected.raw"
stop_vhdnbd
"$VHDIMG" check "$TMPD/dyn.vhd" || fail "dyn.vhd is not clean"
qemu-img compare -f vpc -F raw "$TMPD/dyn.vhd" "$TMPD/expected.raw" || fail "dyn.vhd content"

# --- differencing child over a parent full of 0x5a -----------------------------
"$PY3" -c "import sys; open(sys.argv[1], 'wb').write(b'\x5a' * $size)" "$TMPD/parent.raw"
qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on "$TMPD/parent.raw" "$TMPD/parent.vhd"
"$VHDIMG" create -t differencing -b "$TMPD/parent.vhd" "$TMPD/child.vhd" || fail "vhdimg create child"
parent_sum=$(sha256sum < "$TMPD/parent.vhd")
cp "$TMPD/parent.raw" "$TMPD/expected-child.raw"
start_vhdnbd "$sock" "$TMPD/child.vhd"
qio -c "read -P 0x5a 0 1m" -c "read -P 0x5a $((size - 1024 * 1024)) 1m"
run_workload 0x5a "$TMPD/expected-child.raw"
stop_vhdnbd
"$VHDIMG" check "$TMPD/child.vhd" || fail "child.vhd is not clean"
"$VHDIMG" convert -O raw "$TMPD/child.vhd" "$TMPD/child.raw" || fail "vhdimg convert child"
cmp "$TMPD/expected-child.raw" "$TMPD/child.raw" || fail "child.vhd content"
[ "$(sha256sum < "$TMPD/parent.vhd")" = "$parent_sum" ] || fail "the parent changed"
echo PASS
