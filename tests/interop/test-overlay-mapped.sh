#!/bin/bash
# A persistent overlay keyed on the client's address, served from a
# dual-stack IPv6 socket (as systemd passes one for ListenStream=PORT),
# where an IPv4 client shows as ::ffff:127.0.0.1, and from a plain IPv4
# socket, where it shows as 127.0.0.1:
#   - both ways the client gets one child, keyed as 127.0.0.1;
#   - a child an older vhdnbd made under the key ::ffff:127.0.0.1 is still
#     found, both ways, while no child under 127.0.0.1 exists;
#   - with both present, the one under 127.0.0.1 is used.
# Exits 77 when the host cannot listen on a dual-stack IPv6 socket.
. "$top_srcdir/tests/functions.sh"
requires_py nbd
cd "$TMPD"
img=$TMPD/base.vhd ov=$TMPD/ov log=$TMPD/log
"$VHDIMG" create "$img" 64M >/dev/null

# launch.py PORTS_FILE VHDNBD ARGS...: binds a dual-stack socket on [::]
# (fd 3) and an IPv4 one on 127.0.0.1 (fd 4), writes their ports, then
# becomes vhdnbd with them as its systemd sockets (same PID, for $!).
cat >launch.py <<'PY'
import os, socket, sys
try:
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s6.bind(("::", 0))
    s6.listen(16)
except OSError as e:
    print("no dual-stack IPv6 socket on [::]: %s" % e, file=sys.stderr)
    sys.exit(77)
s4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s4.bind(("127.0.0.1", 0))
s4.listen(16)
with open(sys.argv[1], "w") as f:
    f.write("%d %d\n" % (s6.getsockname()[1], s4.getsockname()[1]))
os.dup2(s6.fileno(), 3)
os.dup2(s4.fileno(), 4)
os.set_inheritable(3, True)
os.set_inheritable(4, True)
env = dict(os.environ, LISTEN_PID=str(os.getpid()), LISTEN_FDS="2")
os.execve(sys.argv[2], sys.argv[2:], env)
PY

# Probe once, apart from the server: can this host do it at all?
"$PY3" - <<'PY' || { echo "SKIP: the host has no dual-stack IPv6 (connect to ::ffff:127.0.0.1 on [::])"; exit 77; }
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 0))
s.listen(1)
c = socket.create_connection(("::ffff:127.0.0.1", s.getsockname()[1]), timeout=5)
a, peer = s.accept()
assert peer[0] == "::ffff:127.0.0.1", peer
PY

serve() {
  rm -f ports pid
  "$PY3" launch.py ports "$VHDNBD" -v --pidfile "$TMPD/pid" \
    -e "p=$img,overlay=persistent,overlay-key=address,overlay-dir=$ov" 2>>"$log" &
  VHDNBD_PID=$!
  cleanup_fn "kill $VHDNBD_PID 2>/dev/null; wait $VHDNBD_PID 2>/dev/null"
  wait_for 30 "vhdnbd writing its pidfile" test -s "$TMPD/pid"
  read -r port6 port4 <ports
}

# client HOST PORT ACTION: write: 0xBYTE at 0 and flush; expect BYTE: reads it.
client() {
  "$PY3" - "$@" <<'PY'
import sys, nbd
host, port, action, byte = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4], 0)
h = nbd.NBD()
h.set_export_name("p")
h.connect_tcp(host, port)
if action == "write":
    h.pwrite(bytes([byte]) * 4096, 0)
    h.flush()
else:
    got = h.pread(4096, 0)
    assert got == bytes([byte]) * 4096, "%s: expected 0x%02x, got 0x%02x" % (host, byte, got[0])
h.shutdown()
PY
}

children() { find "$ov" -name '*.vhd' | wc -l; }

serve
client 127.0.0.1 "$port4" write 0xaa || fail "the write over IPv4"
client ::ffff:127.0.0.1 "$port6" expect 0xaa ||
  fail "the same client, IPv4-mapped on the dual-stack socket, got another child"
client 127.0.0.1 "$port6" write 0xab || fail "the write over IPv4 on the dual-stack socket"
client 127.0.0.1 "$port4" expect 0xab ||
  fail "the write through the dual-stack socket is not seen over IPv4"
stop_vhdnbd
[ "$(children)" -eq 1 ] || fail "$(children) children for one client address, not 1"
grep -q "overlay .*/p-p-127\.0\.0\.1-[0-9a-f]*\.vhd created for 127\.0\.0\.1$" "$log" ||
  fail "the child was not keyed as 127.0.0.1: $(cat "$log")"

# The child and its record as an older vhdnbd named them for the client on
# the dual-stack socket: the key ::ffff:127.0.0.1.
child=$(ls "$ov"/p-*.vhd)
old=$("$PY3" - "$ov" <<'PY'
import hashlib, re, sys
key = "::ffff:127.0.0.1"
h = hashlib.sha256(b"p\0a" + key.encode()).hexdigest()
print("%s/p-p-%s-%s.vhd" % (sys.argv[1], re.sub(r"[^A-Za-z0-9._-]", "_", key)[:24], h))
PY
)
mv "$child" "$old"
mv "$child.base" "$old.base"
serve
client 127.0.0.1 "$port4" expect 0xab || fail "the older child is not found over IPv4"
client ::ffff:127.0.0.1 "$port6" expect 0xab || fail "the older child is not found IPv4-mapped"
client 127.0.0.1 "$port4" write 0xac || fail "the write into the older child"
stop_vhdnbd
[ "$(children)" -eq 1 ] || fail "a new child was made beside the older one: $(ls "$ov")"
[ -f "$old" ] || fail "the older child is gone"

# Both present: the child under the key it has now wins.
cp "$old" "$child"
cp "$old.base" "$child.base"
serve
client ::ffff:127.0.0.1 "$port6" write 0xad || fail "the write with both children present"
stop_vhdnbd
cmp -s "$old" "$child" && fail "the write changed neither child, or both alike"
serve
client 127.0.0.1 "$port4" expect 0xad || fail "the child under 127.0.0.1 was not used"
stop_vhdnbd
echo "ok: an IPv4 client has one child whether it comes over IPv4 or IPv4-mapped IPv6"
