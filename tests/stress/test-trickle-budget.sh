#!/bin/bash
# A WRITE payload counts against --max-inflight as its bytes arrive, not in
# full when its header does: a client that declares a 32 MiB WRITE and
# trickles it must not use up the shared budget of the others.  Here the
# budget is 8M; while such a client trickles, another client with a large
# READ still in flight (its reply unread) sends a small WRITE, which must
# reach the image (a third client sees it).  With the payload counted in
# full the budget is exhausted and that WRITE is never even read.
. "$top_srcdir/tests/functions.sh"

[ -x "$VHDNBD" ] || fail "$VHDNBD is not built"
img=$TMPD/disk.vhd
"$VHDIMG" create -t dynamic "$img" 64M >/dev/null
start_vhdnbd "$TMPD/sock" --max-inflight 8M "$img" 2>"$TMPD/log"

"$PY3" - "$TMPD/sock" <<'PY' || fail "$(tail -5 "$TMPD/log")"
import socket, struct, sys, time

path = sys.argv[1]
MiB = 1 << 20

def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise ConnectionError("closed")
        b += c
    return b

def go():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    assert recv_exact(s, 18)[:8] == b"NBDMAGIC"
    s.sendall(struct.pack(">I", 3) + struct.pack(">QII", 0x49484156454F5054, 7, 6) +
              struct.pack(">IH", 0, 0))
    while True:
        _, _, typ, n = struct.unpack(">QIII", recv_exact(s, 20))
        recv_exact(s, n)
        assert not typ & 0x80000000, "GO refused"
        if typ == 1:
            return s

def req(typ, off, length, cookie=1):
    return struct.pack(">IHHQQI", 0x25609513, 0, typ, cookie, off, length)

def read(s, off, length, cookie=1):
    s.sendall(req(0, off, length, cookie))
    magic, err, c = struct.unpack(">IIQ", recv_exact(s, 16))
    assert (magic, err, c) == (0x67446698, 0, cookie), (magic, err, c)
    return recv_exact(s, length)

trickler = go()
trickler.sendall(req(1, 32 * MiB, 32 * MiB) + b"t" * 100)
reader = go()
reader.sendall(req(0, 0, 16 * MiB, cookie=2))  # its reply stays unread
pattern = b"w" * 4096
reader.sendall(req(1, 20 * MiB, 4096, cookie=3) + pattern)
checker = go()
deadline = time.monotonic() + 10
while read(checker, 20 * MiB, 4096) != pattern:
    assert time.monotonic() < deadline, \
        "a WRITE behind a large READ was never served while a payload trickled"
    trickler.sendall(b"t")
    time.sleep(0.1)
print("ok: the WRITE reached the image while a 32 MiB payload trickled")
for s in (trickler, reader, checker):
    s.close()
PY
stop_vhdnbd
"$VHDIMG" check "$img" >/dev/null || fail "vhdimg check failed"
echo PASS
