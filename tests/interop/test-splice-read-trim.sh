#!/bin/bash
# A spliced READ reply holds page-cache pages in a pipe until the client
# takes them; a TRIM (or a WRITE_ZEROES that may punch) of nearby sectors
# from another client meanwhile must not show as zeros outside the sectors
# it zeroes.  A file system may zero or drop the page cache of every block
# a hole punch touches (XFS does, by its 4 KiB blocks), so vhdnbd punches
# only whole blocks and writes zeros over the rest of the range.
#
# For a fixed and a dynamic image: 1 MiB READs (spliced over a Unix socket)
# each with four 512-byte TRIMs of sectors inside it (never 4 KiB-aligned)
# sent at once on a second connection; every byte outside every sector ever
# trimmed must read as written, in the READs and after a FLUSH.
#
# The effect shows on XFS: as root, with mkfs.xfs installed, the images go
# on an XFS file system made on a loop device; otherwise they stay where
# the test runs, which does not show it (PARTIAL).
. "$top_srcdir/tests/functions.sh"
requires_py nbd

xfs_dir
dir=$XFS_DIR
fstype=$(df --output=fstype "$dir" | tail -n 1)
[ "$fstype" = xfs ] ||
  echo "PARTIAL: no XFS could be made (not root, no mkfs.xfs or no loop device): tested on $fstype, where a punch zeroes no more than its range"

cat >"$TMPD/client.py" <<'PY'
# client.py SOCK ROUNDS SEED: see the test's header.  Exits 1 on a wrong byte.
import random, select, sys, nbd
sock, rounds, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
MIB = 1 << 20
a, b = nbd.NBD(), nbd.NBD()
a.connect_unix(sock)
b.connect_unix(sock)
size = a.get_size()
rng = random.Random(seed)
data = bytearray(rng.randbytes(size))
a.pwrite(bytes(data), 0)
a.flush()
trimmed = set()  # every sector trimmed so far: its content is undefined
bad = 0

def pump(handles):
    for _ in range(1000):
        if not any(h.aio_in_flight() for h in handles):
            return
        fds = {h.aio_get_fd(): h for h in handles}
        want_w = [fd for fd, h in fds.items() if h.aio_get_direction() & nbd.AIO_DIRECTION_WRITE]
        r, w, _ = select.select(list(fds), want_w, [], 1)
        for fd in r:
            fds[fd].aio_notify_read()
        for fd in w:
            fds[fd].aio_notify_write()
    sys.exit("requests still in flight after 1000 polls")

for i in range(rounds):
    off = rng.randrange(0, size // MIB) * MIB
    buf = nbd.Buffer(MIB)
    cr = a.aio_pread(buf, off)
    secs, cookies = [], []
    for _ in range(4):
        s = off // 512 + rng.randrange(MIB // 512)
        if s % 8 == 0:
            s += 1  # never at a 4 KiB boundary
        secs.append(s)
        trimmed.add(s)
        cookies.append(b.aio_trim(512, s * 512))
    pump((a, b))
    a.aio_command_completed(cr)  # raises if the READ failed
    for c in cookies:
        b.aio_command_completed(c)
    got = buf.to_bytearray()
    wrong = [k for k in range(0, MIB, 512)
             if (off + k) // 512 not in trimmed and got[k:k + 512] != data[off + k:off + k + 512]]
    if wrong:
        bad += 1
        if bad <= 3:
            print("READ of %d bytes at %d, TRIMs of sectors %s: %d sectors never trimmed read "
                  "wrong, the first at %d" % (MIB, off, secs, len(wrong), off + wrong[0]))
a.flush()
got = a.pread(size, 0)
lost = [k for k in range(0, size, 512) if k // 512 not in trimmed and got[k:k + 512] != data[k:k + 512]]
print("%d of %d READs wrong outside the trimmed sectors; %d sectors never trimmed changed"
      % (bad, rounds, len(lost)))
sys.exit(1 if bad or lost else 0)
PY

for type in fixed dynamic; do
  img=$dir/$type.vhd
  "$VHDIMG" create -t $type --exact "$img" 16M >/dev/null
  start_vhdnbd "$TMPD/nbd.sock" "$img"
  "$PY3" "$TMPD/client.py" "$TMPD/nbd.sock" 300 7 >"$TMPD/client.out" 2>&1 ||
    fail "$type image on $fstype: $(cat "$TMPD/client.out")"
  stop_vhdnbd
  echo "ok: $type image on $fstype: $(tail -n 1 "$TMPD/client.out")"
done
