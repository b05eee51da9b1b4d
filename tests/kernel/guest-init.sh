#!/bin/sh
# /init of the test guest (busybox sh).  Drives the kernel NBD client against
# the server on the host and reports on the console with lines
#   KTEST: PASS <step> at <uptime>s
#   KTEST: FAIL <step>: <why>
#   KTEST: SUM <md5> <file>
#   KTEST: ALL PASSED
#   KTEST: END
# then powers off.  Parameters come from the kernel command line:
#   ktest_port=N  the server's port on the host (10.0.2.2 under qemu slirp)
# /pattern.bin (4 MiB) is written by the host, which checks the same bytes in
# the image afterwards, so a write the server acknowledged but lost shows up.
# busybox sh runs its own applets before PATH (its mke2fs cannot make ext4),
# so e2fsprogs' tools are called by absolute path.
export PATH=/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
/bin/busybox --install -s /bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp

HOST=10.0.2.2
PORT=$(sed -n 's/.*ktest_port=\([0-9]*\).*/\1/p' /proc/cmdline)
DEV=/dev/nbd0
MB=1048576
failed=0

say() { echo "KTEST: $*"; }
# The guest's uptime tells, in the host's log, which step is slow.
pass() { say "PASS $1 at $(cut -d' ' -f1 /proc/uptime)s"; }
# fail STEP WHY: report, clean up and stop; later steps depend on this one.
fail() {
  say "FAIL $1: $2"
  failed=1
  finish
}
finish() {
  umount /mnt 2>/dev/null
  nbd-client -d $DEV >/dev/null 2>&1
  if [ $failed = 0 ]; then say "ALL PASSED"; fi
  say END
  sync
  poweroff -f
  # Should poweroff fail, init exiting panics the kernel, and with panic=-1
  # and -no-reboot qemu exits all the same.
  sleep 10
  exit 1
}

# nbd_connect STEP ARGS...: attach $DEV and wait until it has a size.
nbd_connect() {
  step=$1
  shift
  nbd-client $HOST "$PORT" $DEV -N '' "$@" ||
    fail "$step" "nbd-client $HOST $PORT $DEV -N '' $* exited $?"
  i=0
  while [ "$(cat /sys/block/nbd0/size 2>/dev/null || echo 0)" = 0 ]; do
    i=$((i + 1))
    [ $i -le 100 ] || fail "$step" "$DEV has no size 10 s after connecting"
    sleep 0.1
  done
}

nbd_disconnect() {
  nbd-client -d $DEV || fail "$1" "nbd-client -d $DEV exited $?"
  i=0
  while [ "$(cat /sys/block/nbd0/size 2>/dev/null || echo 0)" != 0 ]; do
    i=$((i + 1))
    [ $i -le 100 ] || fail "$1" "$DEV still has a size 10 s after disconnecting"
    sleep 0.1
  done
}

drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

# piece NAME SKIP_BYTES LEN_BYTES: a slice of /pattern.bin as /tmp/NAME.
piece() {
  dd if=/pattern.bin of="/tmp/$1" bs=512 iflag=skip_bytes,count_bytes \
    skip="$2" count="$3" 2>/dev/null
}

# expect STEP OFFSET FILE WHAT: the device holds FILE at byte OFFSET, read
# with O_DIRECT so that the page cache cannot answer instead of the server.
expect() {
  len=$(stat -c %s "$3")
  bs=65536
  [ $((len % bs)) = 0 ] || bs=512
  if ! dd if=$DEV of=/tmp/readback bs=$bs iflag=direct,skip_bytes \
    skip="$2" count=$((len / bs)) 2>/dev/null; then
    fail "$1" "reading $4 failed"
  fi
  cmp -s /tmp/readback "$3" || fail "$1" "$4 differs from what was written"
  rm -f /tmp/readback
}

# rawcheck STEP: the raw regions read back equal what was written; an
# untouched region reads as zeroes.
rawcheck() {
  expect "$1" $((201 * MB)) /tmp/p1 "3 MiB at 201 MiB"
  expect "$1" $((206 * MB - 1024)) /tmp/p2 "3 sectors at 206 MiB - 1 KiB"
  expect "$1" $((size - MB)) /tmp/p3 "the last MiB"
  expect "$1" $((210 * MB)) /tmp/zero "the never-written MiB at 210 MiB (zeroes)"
  expect "$1" $((212 * MB)) /tmp/p1a "the MiB before the discarded one (212 MiB)"
  expect "$1" $((214 * MB)) /tmp/p1c "the MiB after the discarded one (214 MiB)"
}

# fscheck STEP SUMS: mount, compare every file with its checksum, unmount.
fscheck() {
  mount -t ext4 $DEV /mnt || fail "$1" "mount -t ext4 $DEV failed"
  (cd /mnt && md5sum -c -s "$2") || fail "$1" "files differ from $2: $(cd /mnt && md5sum -c "$2" 2>&1 | grep -v ': OK' | head -n 3)"
  umount /mnt || fail "$1" "umount failed"
}

[ -n "$PORT" ] || fail boot "no ktest_port= on the kernel command line"

while read -r m; do
  insmod "/lib/modules/$m.ko" || fail modules "insmod $m.ko failed"
done </lib/modules/load-order
pass modules

i=0
while [ ! -e /sys/class/net/eth0 ]; do
  i=$((i + 1))
  [ $i -le 100 ] || fail network "no eth0 10 s after loading virtio_net"
  sleep 0.1
done
ip link set lo up && ip link set eth0 up &&
  ip addr add 10.0.2.15/24 dev eth0 &&
  ip route add default via $HOST || fail network "cannot configure eth0"
pass network

nbd_connect connect
size=$(blockdev --getsize64 $DEV)
[ "$size" -ge $((256 * MB)) ] || fail connect "$DEV is $size bytes, expected at least 256 MiB"
say "INFO size $size"
pass connect

# Raw I/O beyond the file system: 3 MiB across a 2 MiB block boundary, three
# sectors straddling another boundary, and the last MiB of the disk.  Then a
# discard of the middle MiB of another 3 MiB, which ends halfway through a
# block: what it reads as is unspecified, but its neighbours must not change.
piece p1 0 $((3 * MB))
piece p1a 0 $MB
piece p1c $((2 * MB)) $MB
piece p2 $((3 * MB)) 1536
piece p3 $((3 * MB)) $MB
dd if=/dev/zero of=/tmp/zero bs=64k count=16 2>/dev/null
dd if=/tmp/p1 of=$DEV bs=64k oflag=direct,seek_bytes seek=$((201 * MB)) 2>/dev/null ||
  fail raw "writing 3 MiB at 201 MiB failed"
dd if=/tmp/p2 of=$DEV bs=512 oflag=direct,seek_bytes seek=$((206 * MB - 1024)) 2>/dev/null ||
  fail raw "writing 3 sectors at 206 MiB - 1 KiB failed"
dd if=/tmp/p3 of=$DEV bs=64k oflag=direct,seek_bytes seek=$((size - MB)) 2>/dev/null ||
  fail raw "writing the last MiB failed"
dd if=/tmp/p1 of=$DEV bs=64k oflag=direct,seek_bytes seek=$((212 * MB)) 2>/dev/null ||
  fail raw "writing 3 MiB at 212 MiB failed"
[ "$(cat /sys/block/nbd0/queue/discard_max_bytes)" -gt 0 ] ||
  fail raw "$DEV takes no discards: the server did not advertise NBD_FLAG_SEND_TRIM"
blkdiscard -o $((213 * MB)) -l $MB $DEV || fail raw "discarding 1 MiB at 213 MiB failed"
blockdev --flushbufs $DEV || fail raw "flush failed"
drop_caches
rawcheck raw
pass raw

# ext4 on the first 192 MiB, leaving the raw regions alone.
/bin/mke2fs -q -F -t ext4 -b 4096 $DEV 192M || fail mkfs "mke2fs -t ext4 failed"
pass mkfs
mount -t ext4 $DEV /mnt || fail ext4 "mount -t ext4 $DEV failed"
mkdir -p /mnt/a/b
cp /pattern.bin /mnt/a/pattern.bin
dd if=/dev/urandom of=/mnt/random1 bs=64k count=40 2>/dev/null
n=0
while [ $n -lt 50 ]; do
  echo "small file $n" >/mnt/a/b/f$n
  n=$((n + 1))
done
(cd /mnt && find . -type f ! -name lost+found | sort | xargs md5sum) >/tmp/sums1 ||
  fail ext4 "md5sum failed"
sync
umount /mnt || fail ext4 "umount failed"
drop_caches
fscheck ext4 /tmp/sums1
/bin/e2fsck -fn $DEV >/tmp/fsck.log 2>&1 || fail ext4 "e2fsck -fn: $(tail -n 5 /tmp/fsck.log)"
pass ext4

nbd_disconnect disconnect
pass disconnect

# Several connections at once: the server advertises CAN_MULTI_CONN, so the
# kernel spreads requests over them and a flush on one covers all.
nbd_connect multiconn -C 4
drop_caches
rawcheck multiconn
fscheck multiconn /tmp/sums1
mount -t ext4 $DEV /mnt || fail multiconn "mount failed"
for n in 1 2 3 4; do
  dd if=/dev/urandom of=/mnt/par$n bs=64k count=32 2>/dev/null &
done
wait
cp -r /mnt/a /mnt/copy
(cd /mnt && find . -type f ! -name lost+found | sort | xargs md5sum) >/tmp/sums2 ||
  fail multiconn "md5sum failed"
sync
umount /mnt || fail multiconn "umount failed"
drop_caches
fscheck multiconn /tmp/sums2
/bin/e2fsck -fn $DEV >/tmp/fsck.log 2>&1 || fail multiconn "e2fsck -fn: $(tail -n 5 /tmp/fsck.log)"
nbd_disconnect multiconn
pass multiconn

while read -r sum file; do
  say "SUM $sum $file"
done </tmp/sums2
finish
