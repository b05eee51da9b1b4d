#!/bin/bash
# Replies a worker sends itself (conn_send_direct).  A request alone on its
# connection that a worker serves (here FUA WRITEs, FLUSHes and TRIMs, which
# never run on the loop) gets its short reply straight from that worker:
# vhdnbd_replies_from_workers_total counts them, and none with
# VHDNBD_DIRECT_REPLIES=0.  Such a reply must never land inside another
# reply: a raw client pipelines a FUA WRITE with a 4 MiB READ (sent in
# 1 MiB slices), in both orders, the WRITE also inside the READ's second
# slice (which then waits for it, so the WRITE ends between two slices),
# and parses every byte of both replies, many times over, over a Unix
# socket and over TCP.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires_py nbd

M=$((1024 * 1024))
img=$TMPD/disk.vhd
qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$img" $((16 * M))

cat >"$TMPD/qd1.py" <<'PY'
# qd1.py SOCK: one request at a time; prints how many it sent.
import random, sys, nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
rng = random.Random(3)
n = 0
for i in range(200):
    off = rng.randrange(16 * 2048 - 8) * 512
    d = rng.randbytes(4096)
    h.pwrite(d, off, nbd.CMD_FLAG_FUA)
    assert h.pread(4096, off) == d, "WRITE at %d does not read back" % off
    h.flush()
    n += 2
    if h.can_trim() and i % 4 == 0:
        h.trim(4096, rng.randrange(16 * 256) * 4096)
        n += 1
print(n)
PY

# run DIRECT_REPLIES: sets direct to the count of replies sent by workers.
run() {
  local prom=$TMPD/m.prom sent
  rm -f "$prom"
  export VHDNBD_DIRECT_REPLIES=$1
  start_vhdnbd "$TMPD/sock" --metrics-file "$prom" --metrics-interval 1 "$img" \
    2>"$TMPD/server.log"
  unset VHDNBD_DIRECT_REPLIES
  sent=$("$PY3" "$TMPD/qd1.py" "$TMPD/sock") || fail "the QD1 client failed"
  wait_requests_ok "$prom" "$sent" WRITE FLUSH TRIM
  stop_vhdnbd
  direct=$(export_metric "$prom" replies_from_workers_total)
  [ -n "$direct" ] || fail "no replies_from_workers_total in the metrics file"
  echo "VHDNBD_DIRECT_REPLIES=$1: $direct of $sent worker-served requests answered by their worker"
  total=$sent
}

run 1
# Each request of qd1.py is alone on the connection, and the output is idle
# once the reply before it was written: nearly all qualify.
[ "$direct" -ge $((total * 9 / 10)) ] ||
  fail "only $direct of $total requests alone on their connection were answered by their worker"
run 0
[ "$direct" -eq 0 ] || fail "VHDNBD_DIRECT_REPLIES=0, yet $direct replies came from workers"

cat >"$TMPD/interleave.py" <<'PY'
# interleave.py unix SOCK | tcp PORT: 80 rounds of a FUA WRITE pipelined
# with a 4 MiB READ, simple replies (no structured replies negotiated, so a
# READ's reply is one header and then bare data); every reply parsed.
import random, struct, sys
import nbdraw
c = nbdraw.Raw.unix(sys.argv[2]) if sys.argv[1] == "unix" else nbdraw.Raw.tcp("127.0.0.1", sys.argv[2])
c.newstyle()
c.go()
CMD_READ, CMD_WRITE, FLAG_FUA = 0, 1, 1
M = 1 << 20
rng = random.Random(5)
model = bytearray(16 * M)
def request(cmd, flags, cookie, off, length, data=b""):
    c.send(struct.pack(">IHHQQI", nbdraw.REQUEST_MAGIC, flags, cmd, cookie, off, length) + data)
# The READ's range holds data, so its reply is read from blocks, not holes.
for off in range(0, 8 * M, M):
    d = rng.randbytes(M)
    request(CMD_WRITE, 0, 1, off, M, d)
    model[off:off + M] = d
    magic, err, cookie = struct.unpack(">IIQ", c.recv(16))
    assert magic == nbdraw.SIMPLE_REPLY_MAGIC and err == 0, "fill WRITE failed"
for rnd in range(80):
    roff = rng.randrange(4) * M
    if rnd % 2:
        # The WRITE first, elsewhere: it is alone when dispatched.
        woff = 8 * M + rng.randrange(8 * 2048 - 8) * 512
        d = rng.randbytes(4096)
        request(CMD_WRITE, FLAG_FUA, 100, woff, 4096, d)
        request(CMD_READ, 0, 200, roff, 4 * M)
    else:
        # The READ first, the WRITE inside its second slice (with the
        # bytes already there, so the READ's data is known whichever comes
        # first): that slice waits for the WRITE, so the WRITE ends while
        # the READ's reply is half-sent and nothing else is being written.
        woff = roff + M + rng.randrange(2048 - 8) * 512
        d = bytes(model[woff:woff + 4096])
        request(CMD_READ, 0, 200, roff, 4 * M)
        request(CMD_WRITE, FLAG_FUA, 100, woff, 4096, d)
    model[woff:woff + 4096] = d
    seen = set()
    for _ in range(2):
        magic, err, cookie = struct.unpack(">IIQ", c.recv(16))
        assert magic == nbdraw.SIMPLE_REPLY_MAGIC, \
            "round %d: bytes %08x where a reply header should start" % (rnd, magic)
        assert err == 0, "round %d: request %d failed: %d" % (rnd, cookie, err)
        assert cookie in (100, 200) and cookie not in seen, "round %d: cookie %d" % (rnd, cookie)
        seen.add(cookie)
        if cookie == 200:
            got = c.recv(4 * M)
            assert got == bytes(model[roff:roff + 4 * M]), \
                "round %d: the READ's data is not the image's (another reply inside it?)" % rnd
print("ok")
PY

start_vhdnbd_tcp "$TMPD/sock2" "$img" 2>"$TMPD/server2.log"
"$PY3" "$TMPD/interleave.py" unix "$TMPD/sock2" >/dev/null ||
  fail "Unix socket: a reply was broken (see above)"
"$PY3" "$TMPD/interleave.py" tcp "$VHDNBD_PORT" >/dev/null ||
  fail "TCP: a reply was broken (see above)"
stop_vhdnbd
echo "ok"
