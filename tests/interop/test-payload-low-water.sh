#!/bin/bash
# Large WRITE payloads over TCP are read in one piece: while 64 KiB or more
# of a payload is still to come, the server sets the socket's low-water mark
# (SO_RCVLOWAT) to what is left (at most 1 MiB), so the kernel wakes the
# event loop once the payload is whole instead of for every piece; the mark
# goes back to 1 for the next header.
#  - wake-ups: a raw client sends a 1 MiB payload in 32 pieces of 32 KiB a
#    few milliseconds apart; the loop thread may sleep and wake (voluntary
#    context switches) only a few times for the whole WRITE, not once a
#    piece; the same for a payload spliced into a pipe, which a TCP
#    payload is while another client has bytes in flight (here a READ
#    reply it does not read): exactly those six WRITEs must be counted as
#    spliced; the header comes with one piece or with four (then the
#    first read fills the staging buffer and a second takes the rest);
#  - the mark never above what is left, and back to 1: payloads of 64 KiB
#    + 1 to 3 MiB sent in pieces of random size with pauses, two WRITEs in
#    one send, a READ sent alone after a pause; every byte read back;
#  - --payload-timeout 1: a payload that keeps trickling one byte at a time
#    (held back by the kernel, unread) is not taken for stalled and
#    completes; one that stops is closed; a client that leaves half-way
#    is noticed, and the next client is served.
. "$top_srcdir/tests/functions.sh"

[ -x "$VHDNBD" ] || fail "$VHDNBD is not built"
img=$TMPD/disk.vhd
"$VHDIMG" create -t dynamic "$img" 64M >/dev/null
port=$(free_tcp_port)
start_vhdnbd "$TMPD/sock" -v -b 127.0.0.1 -p "$port" --payload-timeout 1 \
  --metrics-file "$TMPD/m.prom" --metrics-interval 1 "$img" 2>"$TMPD/log"

rc=0
"$PY3" - "$port" "$VHDNBD_PID" "$TMPD/log" >"$TMPD/out" 2>&1 <<'PY' || rc=$?
import random, socket, struct, sys, time
import nbdraw
from nbdraw import closed_within

port, pid, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(20261130)
K, M = 1024, 1 << 20

class Conn(nbdraw.Raw):
    def sendall(self, data):
        self.s.sendall(data)

def go():
    c = Conn.tcp("127.0.0.1", port, 10)
    c.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.newstyle()
    c.go()
    return c

def req(typ, off, length, cookie):
    return nbdraw.request(typ, off, length, cookie)

def reply(s, cookie, what):
    magic, err, c = struct.unpack(">IIQ", s.recv(16))
    assert (magic, err, c) == (0x67446698, 0, cookie), "%s: reply %r" % (what, (magic, err, c))

def read_back(s, off, data, cookie, what):
    time.sleep(0.02)  # the READ's header comes alone: the mark must be 1 again
    s.sendall(req(0, off, len(data), cookie))
    reply(s, cookie, what + " (READ)")
    got = s.recv(len(data))
    assert got == data, "%s: read back differs" % what

def loop_wakeups():
    with open("/proc/%d/task/%d/status" % (pid, pid)) as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches for the loop thread")

# Wake-ups of the loop thread for one paced 1 MiB WRITE.  Without the mark
# it wakes for each of the 32 pieces; with it: the header, the whole
# payload, the worker's completion, and perhaps a timer tick.
s = go()
# The header comes with one piece (a short read: the socket is emptied)
# or with four (the staging buffer fills, and the rest of what is there is
# read or spliced in a second go, short of the payload).
def paced_writes(what, cookie):
    data = rng.randbytes(M)
    for first in (1, 4):
        best = None
        for attempt in range(3):
            w0 = loop_wakeups()
            s.sendall(req(1, 0, M, cookie) + data[:first * 32 * K])
            for i in range(first, 32):
                time.sleep(0.003)
                s.sendall(data[i * 32 * K:(i + 1) * 32 * K])
            reply(s, cookie, "paced 1 MiB WRITE " + what)
            cookie += 1
            n = loop_wakeups() - w0
            best = n if best is None else min(best, n)
            print("paced 1 MiB WRITE %s, header with %d of 32 pieces: the loop woke %d times"
                  % (what, first, n))
        assert best <= 8, ("the loop woke %d times (fewest of 3) for one paced WRITE %s, "
                           "header with %d pieces" % (best, what, first))
    read_back(s, 0, data, cookie, "paced WRITE " + what)
paced_writes("copied", 10)
print("ok: few wake-ups")

# Spliced: another client's 32 MiB READ reply, unread, keeps bytes in
# flight, so this client's payloads go into a pipe (counted at the end).
h = go()
h.sendall(req(0, 0, 32 * M, 30))
time.sleep(0.1)
paced_writes("spliced", 50)
h.close()
print("ok: few wake-ups spliced")

# Sizes around and above the mark's bounds, in pieces of random size with
# pauses between some: a mark above what is left would never wake the loop.
def send_pieces(s, data, start):
    pos = start
    while pos < len(data):
        n = rng.choice([1, 511, 4096, 60 * K, 200 * K, M])
        s.sendall(data[pos:pos + n])
        pos += n
        if rng.random() < 0.3:
            time.sleep(0.01)

cookie = 100
for n in [64 * K + 1, 64 * K + 4096, 200 * K, 1000 * K, M, M + 512, 3 * M + 4096]:
    off = rng.randrange(0, 60 * M - n) & ~511
    data = rng.randbytes(n)
    cookie += 1
    head = rng.randrange(0, 8 * K)
    s.sendall(req(1, off, n, cookie) + data[:head])
    time.sleep(0.01)
    send_pieces(s, data, head)
    reply(s, cookie, "WRITE of %d bytes" % n)
    read_back(s, off, data, cookie + 1000, "WRITE of %d bytes" % n)
print("ok: payloads in pieces")

# Two WRITEs in one send, then a third whose header comes alone.
a, b, c = rng.randbytes(300 * K), rng.randbytes(200 * K), rng.randbytes(500 * K)
s.sendall(req(1, 0, len(a), 201) + a + req(1, M, len(b), 202) + b)
# Independent WRITEs may be answered in either order.
replies = set()
for _ in range(2):
    magic, err, ck = struct.unpack(">IIQ", s.recv(16))
    assert (magic, err) == (0x67446698, 0), "two WRITEs in one send: reply %r" % ((magic, err, ck),)
    replies.add(ck)
assert replies == {201, 202}, "two WRITEs in one send: replies for %r" % (sorted(replies),)
s.sendall(req(1, 2 * M, len(c), 203))
time.sleep(0.01)
s.sendall(c[:100 * K])
time.sleep(0.01)
s.sendall(c[100 * K:])
reply(s, 203, "WRITE whose header came alone")
read_back(s, 0, a, 204, "first of two")
read_back(s, M, b, 205, "second of two")
read_back(s, 2 * M, c, 206, "header alone")
print("ok: back to back")

# --payload-timeout 1: bytes held back by the mark count as arriving.
t = go()
data = rng.randbytes(M)
t.sendall(req(1, 8 * M, M, 301) + data[:200 * K])
for i in range(12):  # 3 s, three times the timeout
    time.sleep(0.25)
    t.sendall(data[200 * K + i:200 * K + i + 1])
assert not closed_within(t.s, 0.1), "a trickling 1 MiB WRITE payload was taken for stalled"
t.sendall(data[200 * K + 12:])
reply(t, 301, "trickled WRITE")
read_back(t, 8 * M, data, 302, "trickled WRITE")
t.close()
print("ok: trickling payload served")

t = go()
t.sendall(req(1, 8 * M, M, 303) + data[:200 * K])
t0 = time.monotonic()
assert closed_within(t.s, 10), "a stalled 1 MiB WRITE payload was kept"
print("ok: stalled payload closed after %.1f s" % (time.monotonic() - t0))

t = go()
t.sendall(req(1, 8 * M, M, 304) + data[:300 * K])
time.sleep(0.05)
t.close()
end = time.monotonic() + 10
while time.monotonic() < end:
    with open(log) as f:
        if f.read().count("in the middle of a request") >= 1:
            break
    time.sleep(0.05)
else:
    raise AssertionError("a client gone half-way through a payload was not noticed")
read_back(s, 8 * M, data, 305, "the WRITE before the abandoned one")
s.close()
print("ok: abandoned payload noticed, others served")
PY
cat "$TMPD/out"
[ "$rc" -eq 0 ] || fail "$(tail -20 "$TMPD/log")"
stop_vhdnbd
spliced=$(export_metric "$TMPD/m.prom" writes_spliced_total)
[ "${spliced:-0}" -eq 6 ] || fail "${spliced:-no} WRITEs counted as spliced, 6 expected"
"$VHDIMG" check "$img" >/dev/null || fail "vhdimg check failed"
echo PASS
