#!/bin/bash
# The caps that keep clients from holding what others need, one at a time:
# --max-connections-per-address refuses a third connection from one address;
# beyond --max-handshakes the connection negotiating longest (for a second
# or more) gives way, from the new client's own address when it has one;
# with --max-connections reached, a negotiating connection gives way rather
# than the new client being refused; a WRITE payload that stops arriving for
# --payload-timeout seconds ends its connection, one that keeps trickling
# does not; and the closings are summed up in the log.
. "$top_srcdir/tests/functions.sh"

[ -x "$VHDNBD" ] || fail "$VHDNBD is not built"
img=$TMPD/disk.vhd
"$VHDIMG" create -t dynamic "$img" 64M >/dev/null
port=$(free_tcp_port)
# A quarter of 8: two connections per address, two negotiating.
start_vhdnbd "$TMPD/sock" -b 127.0.0.1 -p "$port" --max-connections 8 --payload-timeout 1 \
  "$img" 2>"$TMPD/log"

rc=0
"$PY3" - "$port" >"$TMPD/out" 2>&1 <<'PY' || rc=$?
import select, socket, struct, sys, time
from nbdraw import closed_within

port = int(sys.argv[1])
try:
    probe = socket.socket()
    probe.bind(("127.0.0.9", 0))
    probe.close()
except OSError as e:
    print("SKIP: cannot bind 127.0.0.9: %s" % e, file=sys.stderr)
    sys.exit(77)

def conn(src):
    s = socket.socket()
    s.settimeout(10)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s

def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise ConnectionError("closed")
        b += c
    return b

def greeting(s):
    assert recv_exact(s, 18)[:8] == b"NBDMAGIC"

def go(s):
    greeting(s)
    s.sendall(struct.pack(">I", 3) + struct.pack(">QII", 0x49484156454F5054, 7, 6) +
              struct.pack(">IH", 0, 0))
    while True:
        _, _, typ, n = struct.unpack(">QIII", recv_exact(s, 20))
        recv_exact(s, n)
        if typ == 1:
            return s
        assert not typ & 0x80000000, "GO refused"

def req(typ, off, length, cookie=1):
    return struct.pack(">IHHQQI", 0x25609513, 0, typ, cookie, off, length)

def reply_ok(s, cookie=1):
    magic, err, c = struct.unpack(">IIQ", recv_exact(s, 16))
    assert (magic, err, c) == (0x67446698, 0, cookie), (magic, err, c)

def still_open(s):
    return not closed_within(s, 0.3)

def aged(s, born):
    # Eviction spares handshakes younger than a second.
    time.sleep(max(0.0, born + 1.2 - time.monotonic()))

# --max-connections-per-address: two from 127.0.0.1, the third refused,
# another address still served.
a1, a2 = go(conn("127.0.0.1")), go(conn("127.0.0.1"))
a3 = conn("127.0.0.1")
assert closed_within(a3, 5), "a third connection from 127.0.0.1 was kept"
b = go(conn("127.0.0.2"))
b.sendall(req(0, 0, 4096))
reply_ok(b)
recv_exact(b, 4096)
for s in (a1, a2, a3, b):
    s.close()
print("ok: per-address cap")

# --max-handshakes: two stall negotiating; a third makes the oldest go.
s3 = conn("127.0.0.3"); greeting(s3); t3 = time.monotonic()
s4 = conn("127.0.0.4"); greeting(s4)
aged(s3, t3)
s5 = conn("127.0.0.5"); greeting(s5); t5 = time.monotonic()
assert closed_within(s3, 5), "the oldest handshake was not evicted"
assert still_open(s4), "a newer handshake was evicted"
# Its own address's handshake gives way, though another is older.
aged(s5, t5)
s7 = conn("127.0.0.5"); greeting(s7)
assert closed_within(s5, 5), "the new client's own older handshake was not evicted"
assert still_open(s4), "another address's handshake was evicted"
print("ok: handshake cap")

# --max-connections reached: a negotiating connection gives way at once.
held = [go(conn("127.0.0.%d" % (10 + i))) for i in range(6)]  # with s4, s7: 8
s8 = conn("127.0.0.6")
assert closed_within(s4, 5), "no negotiating connection gave way at --max-connections"
go(s8)
s8.sendall(req(0, 0, 512))
reply_ok(s8)
for s in held + [s7, s8]:
    s.close()
print("ok: max-connections evicts a handshake")

# --payload-timeout 1: a stalled payload ends its connection...
t = go(conn("127.0.0.2"))
t.sendall(req(1, 0, 1 << 20) + b"x" * 1000)
t0 = time.monotonic()
assert closed_within(t, 10), "a stalled WRITE payload was kept"
print("ok: stalled payload closed after %.1f s" % (time.monotonic() - t0))
# ...a trickling one does not, and completes.
t = go(conn("127.0.0.2"))
t.sendall(req(1, 0, 4096, cookie=7))
for _ in range(10):
    t.sendall(b"y")
    assert still_open(t), "a trickling WRITE payload was closed"
t.sendall(b"y" * (4096 - 10))
reply_ok(t, cookie=7)
t.close()
print("ok: trickling payload served")
PY
cat "$TMPD/out"
[ "$rc" -ne 77 ] || exit 77
[ "$rc" -eq 0 ] || fail "$(cat "$TMPD/out") $(tail -20 "$TMPD/log")"
stop_vhdnbd
for why in "over --max-connections-per-address" "negotiating longest" \
  "WRITE payload stalled"; do
  grep -q "connections closed in the last second: .*$why" "$TMPD/log" ||
    fail "no summary line for '$why': $(cat "$TMPD/log")"
done
"$VHDIMG" check "$img" >/dev/null || fail "vhdimg check failed"
echo PASS
