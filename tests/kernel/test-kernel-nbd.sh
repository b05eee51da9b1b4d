#!/bin/bash
# The Linux kernel's NBD client against vhdnbd: boots a Debian kernel under
# qemu (KVM when it works, TCG otherwise: see guest-run.sh) whose initramfs (see
# guest-init.sh) attaches /dev/nbd0 to a dynamic VHD served on 127.0.0.1
# (reached through qemu's user-mode network), does raw I/O, builds and
# re-reads an ext4 file system, then reconnects with 4 connections and does it
# again.  Afterwards the image must pass vhdimg check, hold the raw data the
# guest wrote, a clean ext4, and files whose checksums match the guest's.
#
# The kernel package is fetched with apt-get download into
# $KTEST_CACHE (default $top_builddir/tests/kernel/cache) and reused.
# Skips when qemu-system-x86_64, busybox or the kernel package is missing.
# KTEST_TIMEOUT bounds the guest's run in seconds (default 270).
. "$top_srcdir/tests/functions.sh"

here="$top_srcdir/tests/kernel"
. "$here/guest-run.sh"
PATH=$PATH:/usr/sbin:/sbin
export PATH

requires qemu-system-x86_64
requires busybox
requires nbd-client
requires mke2fs
requires e2fsck
requires debugfs
requires ldd
requires timeout

# Progress lines carry the seconds since the start, to see where time goes.
note() { echo "[${SECONDS}s] $*"; }

cache=${KTEST_CACHE:-$top_builddir/tests/kernel/cache}
kdir=$(bash "$here/fetch-boot-files.sh" "$cache") || exit $?
kernel=$(ls "$kdir"/boot/vmlinuz-* | head -n 1)
note "kernel: $kernel"

MB=1048576
head -c $((4 * MB)) /dev/urandom >"$TMPD/pattern.bin"
bash "$here/make-initramfs.sh" "$kdir" "$here/guest-init.sh" "$TMPD/initrd.gz" \
  "$TMPD/pattern.bin" || fail "cannot build the initramfs"
note "initramfs built"

img="$TMPD/disk.vhd"
"$VHDIMG" create -t dynamic "$img" 256M >/dev/null || fail "vhdimg create failed"

# A free port can be taken between probing and binding: retry a few times.
pidfile="$TMPD/vhdnbd.pid"
srv_pid=
for _ in 1 2 3; do
  port=$("$PY3" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  rm -f "$pidfile"
  "$VHDNBD" -v -b 127.0.0.1 -p "$port" --pidfile "$pidfile" "$img" 2>>"$TMPD/vhdnbd.log" &
  srv_pid=$!
  for ((i = 0; i < 100; i++)); do
    [ -s "$pidfile" ] && break
    kill -0 "$srv_pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -s "$pidfile" ] && break
  kill "$srv_pid" 2>/dev/null || true
  wait "$srv_pid" 2>/dev/null || true
  srv_pid=
done
[ -n "$srv_pid" ] || { cat "$TMPD/vhdnbd.log"; fail "vhdnbd did not start listening on 127.0.0.1"; }
cleanup_fn "kill $srv_pid 2>/dev/null; wait $srv_pid 2>/dev/null"
note "vhdnbd listening on 127.0.0.1:$port"

console="$TMPD/console.log"
ktest_run_guest "$kernel" "$TMPD/initrd.gz" "$console" "$TMPD/qemu.log" \
  "console=ttyS0 quiet panic=-1 ktest_port=$port"
qemu_rc=$guest_rc
tr -d '\r' <"$console" >"$TMPD/console.txt"
echo "--- guest console"
cat "$TMPD/console.txt"
echo "--- end of guest console"
cat "$TMPD/qemu.log"
if [ -f "$TMPD/qemu.log.kvm" ]; then
  echo "--- qemu output of the failed KVM start"
  cat "$TMPD/qemu.log.kvm"
fi
echo "--- vhdnbd -v log (last 30 lines)"
tail -n 30 "$TMPD/vhdnbd.log"
echo "--- end of vhdnbd log"

if grep -q '^KTEST: FAIL' "$TMPD/console.txt"; then
  fail "guest: $(grep '^KTEST: FAIL' "$TMPD/console.txt" | head -n 1)"
fi
if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
  fail "the guest did not finish within ${KTEST_TIMEOUT:-270} s under $guest_accel"
fi
grep -q '^KTEST: END' "$TMPD/console.txt" ||
  fail "the guest stopped before the end of its script (qemu exit status $qemu_rc under $guest_accel)"
for step in modules network connect raw mkfs ext4 disconnect multiconn; do
  grep -q "^KTEST: PASS $step at " "$TMPD/console.txt" || fail "guest step $step did not pass"
done
grep -q '^KTEST: ALL PASSED' "$TMPD/console.txt" || fail "the guest did not report ALL PASSED"

# The server must stop cleanly, leaving a consistent image.
kill -TERM "$srv_pid"
for ((i = 0; i < 100; i++)); do
  kill -0 "$srv_pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$srv_pid" 2>/dev/null; then
  kill -KILL "$srv_pid"
  fail "vhdnbd still runs 10 s after SIGTERM"
fi
set +e
wait "$srv_pid"
srv_rc=$?
set -e
[ "$srv_rc" = 0 ] || { cat "$TMPD/vhdnbd.log"; fail "vhdnbd exited $srv_rc after SIGTERM"; }
# One connection, then four at once (-C 4).
conns=$(grep -c 'new connection' "$TMPD/vhdnbd.log" || true)
[ "$conns" -ge 5 ] || { cat "$TMPD/vhdnbd.log"; fail "vhdnbd saw $conns connections, expected 1 + 4"; }
note "vhdnbd saw $conns connections"
"$VHDIMG" check "$img" || fail "vhdimg check $img failed after the guest's writes"
note "vhdimg check passed"

# What the guest wrote is in the image, read back without the server.
raw="$TMPD/disk.raw"
"$VHDIMG" convert "$img" "$raw" || fail "vhdimg convert failed"
size=$(stat -c %s "$raw")
slice() { # FILE OFFSET LENGTH
  dd if="$1" bs=64K iflag=skip_bytes,count_bytes skip="$2" count="$3" status=none
}
cmp <(slice "$raw" $((201 * MB)) $((3 * MB))) <(slice "$TMPD/pattern.bin" 0 $((3 * MB))) ||
  fail "the 3 MiB the guest wrote at 201 MiB are not in the image"
cmp <(slice "$raw" $((206 * MB - 1024)) 1536) <(slice "$TMPD/pattern.bin" $((3 * MB)) 1536) ||
  fail "the 3 sectors the guest wrote at 206 MiB - 1 KiB are not in the image"
cmp <(slice "$raw" $((size - MB)) $MB) <(slice "$TMPD/pattern.bin" $((3 * MB)) $MB) ||
  fail "the last MiB the guest wrote is not in the image"
cmp <(slice "$raw" $((212 * MB)) $MB) <(slice "$TMPD/pattern.bin" 0 $MB) ||
  fail "the MiB before the one the guest discarded (at 212 MiB) is not in the image"
cmp <(slice "$raw" $((214 * MB)) $MB) <(slice "$TMPD/pattern.bin" $((2 * MB)) $MB) ||
  fail "the MiB after the one the guest discarded (at 214 MiB) is not in the image"
cmp <(slice "$raw" $((210 * MB)) $MB) <(head -c $MB /dev/zero) ||
  fail "the MiB at 210 MiB the guest never wrote is not zero"
note "raw regions match"

e2fsck -fn "$raw" || fail "e2fsck -fn finds the guest's ext4 damaged in the image"

# Every file the guest summed, dumped from the image, has the same checksum.
sed -n 's/^KTEST: SUM \([0-9a-f]*\) \.\(\/.*\)$/\1 \2/p' "$TMPD/console.txt" >"$TMPD/sums"
n=$(wc -l <"$TMPD/sums")
[ "$n" -gt 50 ] || fail "the guest listed only $n files"
declare -A made=()
while read -r _ file; do
  d="$TMPD/dump${file%/*}"
  [ -n "${made[$d]:-}" ] || mkdir -p "$d"
  made[$d]=1
  echo "dump $file $TMPD/dump$file"
done <"$TMPD/sums" >"$TMPD/debugfs.cmds"
debugfs -f "$TMPD/debugfs.cmds" "$raw" >/dev/null 2>&1 || fail "debugfs cannot read the image's ext4"
(cd "$TMPD/dump" && sed 's/^\([0-9a-f]*\) \//\1  /' "$TMPD/sums" | md5sum --quiet -c -) ||
  fail "files in the image's ext4 differ from what the guest wrote"
note "$n files match the guest's checksums"

# An independent reader (libvhdi) sees the same disk as vhdimg convert.
if "$PY3" -c 'import pyvhdi' 2>/dev/null; then
  "$PY3" - "$img" "$raw" <<'EOF' || fail "libvhdi reads the image differently from vhdimg convert"
import sys, pyvhdi
f = pyvhdi.file()
f.open(sys.argv[1])
with open(sys.argv[2], "rb") as raw:
    off = 0
    chunk = 4 << 20
    while off < f.get_media_size():
        a = f.read_buffer_at_offset(chunk, off)
        b = raw.read(len(a))
        if a != b:
            sys.exit("differs within [%d, %d)" % (off, off + len(a)))
        off += len(a)
f.close()
EOF
  note "libvhdi agrees"
fi
echo "PASS"
