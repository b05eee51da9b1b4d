#!/bin/bash
# Memory held for requests, not only their data, counts against the
# budgets: clients that pipeline BLOCK_STATUS requests over a fragmented
# image (each answer up to 1024 extents, 8 KiB of them held while the answer
# waits) and never read the answers must not make the server grow much
# beyond --max-inflight.  (Before, only the answers counted: 8 clients grew
# it by 66 MiB with --max-inflight 16M.)
. "$top_srcdir/tests/functions.sh"

requires_py nbd
[ -x "$VHDNBD" ] || fail "$VHDNBD is not built"
if sanitizer_build; then
  # AddressSanitizer's quarantine keeps freed memory resident a while, and
  # its redzones and shadow add to every allocation: twice the bound (the
  # unbounded server grew four times more).
  export ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=4"
  : "${REQMEM_GROWTH_LIMIT_MB:=48}"
fi
: "${REQMEM_GROWTH_LIMIT_MB:=24}" # --max-inflight and some slack

img=$TMPD/frag.vhd
"$VHDIMG" create -t dynamic "$img" 64M >/dev/null
start_vhdnbd "$TMPD/sock" --max-inflight 16M "$img" 2>"$TMPD/log"

"$PY3" - "$TMPD/sock" "$VHDNBD_PID" "$REQMEM_GROWTH_LIMIT_MB" <<'PY' || fail "$(tail -5 "$TMPD/log")"
import socket, struct, sys, time
import nbd

path, pid, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
MiB = 1 << 20
CONNS, PIPELINE, RANGE = 8, 512, 2 * MiB

# Every other sector of the first 2 MiB written: 4096 extents there.
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_unix(path)
sector = nbd.Buffer.from_bytearray(bytearray(b"\x5a" * 512))
for k in range(0, RANGE // 512, 2):
    h.aio_pwrite(sector, k * 512)
    while h.aio_in_flight() > 64:
        h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
n_ext = []
h.block_status(RANGE, 0, lambda ctx, off, ents, err: n_ext.append(len(ents) // 2))
assert n_ext and n_ext[0] >= 1000, "the fixture is not fragmented: %r extents" % n_ext

def rss_mb():
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise ConnectionError("closed")
        b += c
    return b

def option(s, opt, data=b""):
    s.sendall(struct.pack(">QII", 0x49484156454F5054, opt, len(data)) + data)
    while True:
        _, _, typ, n = struct.unpack(">QIII", recv_exact(s, 20))
        recv_exact(s, n)
        assert not typ & 0x80000000, "option %d refused" % opt
        if typ == 1:
            return

def hostile():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    recv_exact(s, 18)
    s.sendall(struct.pack(">I", 3))
    option(s, 8)  # STRUCTURED_REPLY
    q = b"base:allocation"
    option(s, 10, struct.pack(">I", 0) + struct.pack(">I", 1) + struct.pack(">I", len(q)) + q)
    option(s, 7, struct.pack(">IH", 0, 0))  # GO
    s.setblocking(False)
    return s

reqs = b"".join(struct.pack(">IHHQQI", 0x25609513, 0, 7, k, 0, RANGE) for k in range(PIPELINE))
socks = [hostile() for _ in range(CONNS)]
before = rss_mb()
for s in socks:
    s.send(reqs)  # 16 KiB: the socket takes it whole, and at once for all
# Watch the server answer into the void for a bounded while.
peak, end = before, time.monotonic() + 3
while time.monotonic() < end:
    peak = max(peak, rss_mb())
    time.sleep(0.05)
growth = peak - before
print("RSS %.0f MiB before, peak %.0f MiB: %.1f MiB for %d clients x %d BLOCK_STATUS"
      % (before, peak, growth, CONNS, PIPELINE))
# Everyone else is still served.
h.block_status(4096, 0, lambda ctx, off, ents, err: None)
h.shutdown()
for s in socks:
    s.close()
assert growth <= limit, "the server grew %.1f MiB, over %.0f MiB" % (growth, limit)
PY
stop_vhdnbd
"$VHDIMG" check "$img" >/dev/null || fail "vhdimg check failed"
echo PASS
