#!/bin/bash
# TRIM and WRITE_ZEROES on a full file system.  They are what one runs to
# get space back; zeroing part of a file system block must not need space
# (a hole there reads as zeros already), and a failed one must not turn
# the image read-only for every later write and flush.
#
# A fixed and a dynamic image on a small tmpfs that is then filled: small
# unaligned zeroings and trims over holes and over data, then a WRITE and
# a FLUSH, all of which must succeed and read back as they should.  Before
# them, on the dynamic image, a WRITE into a block not yet allocated fails
# with ENOSPC, and alone: the WRITE and FLUSH after it still succeed.  Five
# such WRITEs get one log line, and the other four are counted in a line
# when the export closes.  Needs root to mount the tmpfs (else SKIP).
. "$top_srcdir/tests/functions.sh"
requires_py nbd

[ "$(id -u)" -eq 0 ] || { echo "SKIP: not root: no tmpfs to fill" >&2; exit 77; }
mkdir "$TMPD/full"
mount -t tmpfs -o size=12m tmpfs "$TMPD/full" 2>"$TMPD/mount.err" ||
  { echo "SKIP: cannot mount a tmpfs: $(cat "$TMPD/mount.err")" >&2; exit 77; }
cleanup_fn umount -l "$TMPD/full"

cat >"$TMPD/client.py" <<'PY'
# client.py SOCK PHASE: "data" writes 64 KiB of 0x5a at 0 and flushes;
# "zero" (on the full file system) zeroes and trims small unaligned ranges
# over data and over holes, writes 4 KiB of 0x6b at 16 KiB (over data, so
# that it needs no new space), flushes, and
# checks what every range reads.
import errno, sys, nbd
sock, phase = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_unix(sock)
if phase == "data":
    h.pwrite(b"\x5a" * 65536, 0)
    h.flush()
    sys.exit(0)
if phase == "newblock":
    # Blocks the image does not hold yet: no space for them.
    for mib in range(2, 7):
        try:
            h.pwrite(b"\x7c" * 4096, mib * 1024 * 1024)
        except nbd.Error as e:
            assert e.errno == errno.ENOSPC or "ENOSPC" in str(e), "a new block on a full fs: %s" % e
        else:
            sys.exit("a write into a new block on a full file system succeeded")
    sys.exit(0)
h.zero(512, 1024)              # over data, inside one page
h.zero(1536, 64 * 1024 - 512)  # over data and the hole after it
h.zero(512, 3 * 1024 * 1024 + 1024)   # over a hole
h.trim(1024, 8192 + 512)       # over data
h.trim(512, 3 * 1024 * 1024 + 4096 + 512)
h.pwrite(b"\x6b" * 4096, 16 * 1024)
h.flush()
got = h.pread(256 * 1024, 0)
assert got[:1024] == b"\x5a" * 1024, "bytes before the first zeroing changed"
assert got[1024:1536] == bytes(512), "the zeroed 512 bytes at 1024 are not zeros"
assert got[4096:8192] == b"\x5a" * 4096, "data between the zeroings changed"
assert got[64 * 1024 - 512:64 * 1024 + 1024] == bytes(1536), "the zeroing across the data's end"
assert got[16 * 1024:20 * 1024] == b"\x6b" * 4096, "the WRITE after the zeroings"
print("ok")
PY

for type in fixed dynamic; do
  img=$TMPD/full/$type.vhd
  rm -f "$TMPD"/full/*
  "$VHDIMG" create -t $type --exact "$img" 8M >/dev/null
  start_vhdnbd "$TMPD/nbd.sock" "$img" 2>"$TMPD/$type.log"
  "$PY3" "$TMPD/client.py" "$TMPD/nbd.sock" data || fail "$type: writing the data"
  # Fill the file system (dd stops at ENOSPC).
  dd if=/dev/zero of="$TMPD/full/fill" bs=64k 2>/dev/null || true
  [ "$(df --output=avail -B1 "$TMPD/full" | tail -n 1)" -lt 65536 ] || fail "$type: the tmpfs did not fill"
  if [ $type = dynamic ]; then
    out=$("$PY3" "$TMPD/client.py" "$TMPD/nbd.sock" newblock 2>&1) ||
      fail "$type image on a full file system: $out"
  fi
  out=$("$PY3" "$TMPD/client.py" "$TMPD/nbd.sock" zero 2>&1) ||
    fail "$type image on a full file system: $out"
  stop_vhdnbd
  cat "$TMPD/$type.log" >&2
  if [ $type = dynamic ]; then
    # One line for the first ENOSPC, the four after it counted at close.
    n=$(grep -c 'error 28: .*ENOSPC failures of export' "$TMPD/$type.log" || true)
    [ "$n" = 1 ] || fail "$type: $n log lines for the ENOSPC failures, expected 1"
    grep -q "^.*export '[^']*': 4 more ENOSPC failures since the last line that said so$" \
      "$TMPD/$type.log" || fail "$type: the 4 ENOSPC failures left out of the log were not counted at close"
  fi
  "$VHDIMG" check "$img" >/dev/null 2>&1 || [ $? = 3 ] || fail "$type: check after zeroing on a full file system"
  echo "ok: $type image on a full file system"
done
