#!/bin/bash
# fio's nbd engine (libnbd) against vhdnbd: random writes from several jobs at
# once with crc32c verification, then random mixed I/O whose writes carry
# crc32c verification headers too.  Afterwards the image is check-clean and
# holds exactly what the server last served, and the mixed phase's writes are
# verified without the server: fio replays the phase (--verify_only) with
# psync against the raw disk qemu-img reads from the closed image.  The fixed
# image is served by a single worker thread (--threads 1): every request
# then waits its turn on it, and the results must be the same.
. "$top_srcdir/tests/functions.sh"
requires fio
requires qemu-img
if ! fio --enghelp=nbd >/dev/null 2>&1; then
  echo "SKIP: this fio has no nbd engine" >&2
  exit 77
fi

# fio leaves verify-state files in its working directory.
cd "$TMPD"
sock=$TMPD/sock
uri="nbd+unix:///?socket=$sock"
size=$((32 * 1024 * 1024))

# issued FIO_OUTPUT: "READS WRITES" that fio issued.
issued() { sed -n 's/.*issued rwts: total=\([0-9]*\),\([0-9]*\),.*/\1 \2/p' "$1"; }

for t in dynamic fixed; do
  img=$TMPD/$t.vhd
  qemu-img create -q -f vpc -o subformat=$t,force_size=on "$img" "$size"
  threads=8
  [ $t = fixed ] && threads=1
  start_vhdnbd "$sock" --threads "$threads" "$img"

  # Four jobs on disjoint 8 MiB ranges, 4k-64k blocks (unaligned sizes too),
  # each verifying what it wrote.
  cat > "$TMPD/verify.fio" <<EOF
[global]
ioengine=nbd
uri=$uri
rw=randwrite
bsrange=4k-64k
bs_unaligned=1
size=8m
iodepth=16
verify=crc32c
verify_fatal=1
do_verify=1
[j0]
offset=0
[j1]
offset=8m
[j2]
offset=16m
[j3]
offset=24m
EOF
  fio --output="$TMPD/fio-verify.txt" "$TMPD/verify.fio" ||
    fail "$t: fio randwrite+verify: $(cat "$TMPD/fio-verify.txt")"
  grep -q 'err= 0' "$TMPD/fio-verify.txt" || fail "$t: fio reported errors"
  grep -qi 'verify.*fail\|bad magic\|crc32c.*wanted' "$TMPD/fio-verify.txt" &&
    fail "$t: fio verification failed"

  # One pass over the disk (each 4 KiB block read or written once), so that
  # the replay below knows every block's last write; fio's default fixed
  # random seed makes the replay choose the same blocks.
  mixed=(--name=mixed --rw=randrw --rwmixread=60 --bs=4k --size=$size --verify=crc32c)
  fio "${mixed[@]}" --ioengine=nbd --uri="$uri" --iodepth=32 --do_verify=0 \
    --output="$TMPD/fio-mixed.txt" || fail "$t: fio randrw: $(cat "$TMPD/fio-mixed.txt")"
  grep -q 'err= 0' "$TMPD/fio-mixed.txt" || fail "$t: fio randrw reported errors"

  # What the server serves now must be what the image holds after it exits.
  qemu-img convert -f raw -O raw "$uri" "$TMPD/served.raw" || fail "$t: reading the export"
  stop_vhdnbd
  "$VHDIMG" check "$img" || fail "$t.vhd is not clean"
  "$VHDIMG" convert -O raw "$img" "$TMPD/stored.raw" || fail "vhdimg convert $t.vhd"
  cmp "$TMPD/served.raw" "$TMPD/stored.raw" || fail "$t.vhd differs from what was served"
  qemu-img compare -f vpc -F raw "$img" "$TMPD/served.raw" || fail "$t.vhd content (qemu)"
  qemu-img convert -f vpc -O raw "$img" "$TMPD/qemu.raw" || fail "qemu-img convert $t.vhd"
  fio "${mixed[@]}" --ioengine=psync --filename="$TMPD/qemu.raw" --verify_only \
    --verify_fatal=1 --output="$TMPD/fio-replay.txt" 2>"$TMPD/fio-replay.err" ||
    fail "$t: the randrw writes are not in $t.vhd as qemu-img reads it:" \
      "$(cat "$TMPD/fio-replay.err")"
  grep -q 'err= 0' "$TMPD/fio-replay.txt" || fail "$t: fio verify_only reported errors"
  # The replay reads every block and verifies those the phase wrote: it
  # must count as many writes (which it skips) as the phase made.
  written=$(issued "$TMPD/fio-mixed.txt" | cut -d' ' -f2)
  replayed=$(issued "$TMPD/fio-replay.txt")
  [ "$replayed" = "$((size / 4096)) $written" ] ||
    fail "$t: the replay (reads, writes: $replayed) is not the randrw phase ($written writes)"
  rm -f "$TMPD/served.raw" "$TMPD/stored.raw" "$TMPD/qemu.raw"
done
echo PASS
