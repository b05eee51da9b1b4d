#!/bin/bash
# Spliced READ replies (128 KiB to 1 MiB, splice.h) keep every reply whole
# and the server up, whatever the client does:
#  - A READ larger than a slice (1 MiB) is one reply written a slice at a
#    time.  Spliced replies still waiting for the socket when it starts go
#    out before it or after it, never between two of its slices.  A raw
#    client pipelines ten 195 KiB READs, an 8 MiB READ and ten more, with
#    the page cache of the image dropped so that the slices come from the
#    workers, in simple replies and in structured replies with DF (whose
#    sliced data chunk goes without DONE, a NONE chunk ending the reply);
#    every reply is parsed and its bytes checked, five times each.
#  - A client that pipelines 1 MiB READs without reading any reply, until
#    the server stops reading, then closes: the spliced reply being written
#    fails, and the connection closes once (it used to close again from
#    inside its own close until the stack ran out).  Three times; the
#    server then still serves another client.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires nbdinfo

M=$((1024 * 1024))
img=$TMPD/disk.vhd
qemu-img create -q -f vpc -o subformat=dynamic "$img" 64M
start_vhdnbd "$TMPD/sock" "$img" 2>"$TMPD/server.log"

"$PY3" - "$TMPD/sock" "$img" <<'PY' || fail "a reply broke into another"
import os, struct, sys
from nbdraw import Raw, request, OPT_STRUCTURED_REPLY, REP_ACK

sock, img = sys.argv[1], sys.argv[2]
M = 1 << 20
READ, WRITE, FLUSH = 0, 1, 3
DF = 4  # NBD_CMD_FLAG_DF
SIMPLE, CHUNK = 0x67446698, 0x668E33EF


def fill(off, n):
    """Each MiB of the export holds its index, from 1."""
    out = bytearray()
    while n:
        k = min(n, M - off % M)
        out += bytes([off // M + 1]) * k
        off += k
        n -= k
    return bytes(out)


def connect(structured):
    c = Raw.unix(sock)
    c.newstyle()
    if structured:
        typ, _ = c.option(OPT_STRUCTURED_REPLY)
        assert typ == REP_ACK, "structured replies refused"
    c.go("")
    return c


def simple_reply(c):
    magic, err, cookie = struct.unpack(">IIQ", c.recv(16))
    assert magic == SIMPLE, "reply magic %#x where a simple reply starts" % magic
    return err, cookie


c = connect(False)
for off in range(0, 40 * M, M):
    c.send(request(WRITE, off, M, cookie=1) + fill(off, M))
    assert simple_reply(c) == (0, 1), "WRITE at %d failed" % off
c.send(request(FLUSH, 0, 0, cookie=2))
assert simple_reply(c) == (0, 2), "FLUSH failed"
c.close()

for structured in (False, True) * 5:
    fd = os.open(img, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    c = connect(structured)
    want = {}
    cookie = 100
    plan = [((20 + i) * M, 200000) for i in range(10)] + [(0, 8 * M)] + \
           [((30 + i) * M, 200000) for i in range(10)]
    out = b""
    for off, n in plan:
        want[cookie] = (off, n)
        out += request(READ, off, n, cookie=cookie, flags=DF if structured else 0)
        cookie += 1
    c.send(out)
    # Replies whose one data chunk came without DONE (sliced: a later slice
    # could still fail): a NONE chunk with DONE ends each.
    open_ended = set()
    while want or open_ended:
        if structured:
            magic, flags, typ, ck, ln = struct.unpack(">IHHQI", c.recv(20))
            assert magic == CHUNK, "chunk magic %#x where a chunk starts" % magic
            if typ == 0:
                assert ck in open_ended and flags & 1 and ln == 0, \
                    "cookie %#x: NONE chunk (flags %d, %d bytes) ending no open reply" % (ck, flags, ln)
                open_ended.discard(ck)
                continue
            assert ck in want, "chunk for cookie %#x, not an outstanding READ" % ck
            off, n = want.pop(ck)
            assert typ == 1 and ln == n + 8, "cookie %d: chunk type %d, %d bytes" % (ck, typ, ln)
            assert bool(flags & 1) == (n <= M), "cookie %d: %d-byte READ, flags %d" % (ck, n, flags)
            if not flags & 1:
                open_ended.add(ck)
            body = c.recv(ln)
            assert struct.unpack(">Q", body[:8])[0] == off, "cookie %d: offset" % ck
            data = body[8:]
        else:
            err, ck = simple_reply(c)
            assert ck in want, "reply for cookie %#x, not an outstanding READ" % ck
            off, n = want.pop(ck)
            assert err == 0, "cookie %d: error %d" % (ck, err)
            data = c.recv(n)
        exp = fill(off, n)
        if data != exp:
            j = next(k for k in range(n) if data[k] != exp[k])
            sys.exit("%s: READ %d+%d: byte %d is %s, not the image's" %
                     ("structured" if structured else "simple", off, n, j, data[j:j + 16].hex()))
    c.close()
print("every reply whole, every byte the image's")
PY

for round in 1 2 3; do
  "$PY3" - "$TMPD/sock" <<'PY' || fail "round $round: the unread replies' client failed"
import socket, sys
from nbdraw import Raw, request
c = Raw.unix(sys.argv[1])
c.newstyle()
c.go("")
c.s.settimeout(2)
try:
    for i in range(400):
        c.send(request(0, 0, 1 << 20, cookie=100 + i))
except (socket.timeout, BlockingIOError):
    pass
c.close()
PY
  sleep 1
  kill -0 "$VHDNBD_PID" 2>/dev/null || fail "round $round: the server died: $(tail -3 "$TMPD/server.log")"
done
nbdinfo --size "nbd+unix:///?socket=$TMPD/sock" >/dev/null || fail "the server no longer serves"
stop_vhdnbd || fail "the server did not exit cleanly"
exit 0
