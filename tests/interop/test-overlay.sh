#!/bin/bash
# Per-client copy-on-write overlays, with libnbd's Python binding over TLS-PSK
# and plain TCP on 127.0.0.1:
#   persistent, keyed on the PSK identity: alice and bob each see only their
#   own writes, again after reconnecting and while both are connected (and
#   so do two identities alike in their first 255 bytes); two
#   connections of one identity share one child (a flush through one shows
#   through the other), and a
#   client without a TLS identity is refused with NBD_REP_ERR_POLICY and a
#   log line (NBD_OPT_INFO is refused as NBD_OPT_GO is);
#   discard: every connection starts from the image, and no file is left;
#   files named as a server with the same PID once named its children
#   neither stop a client nor are removed;
#   persistent children and their records are mode 0600 under umask 022;
#   persistent keyed on the address: a plain client's writes come back;
#   overlay-max: past it writes fail with ENOSPC, earlier data stays; a
#   flood of such writes gives a line or two in the log, not one each;
#   read-only = yes for every export refuses an overlay export at startup
#   (it used to take writes), read-only = no in its section lets it be.
# At the end the image's checksum is unchanged, and every child passes
# vhdimg check and names the image as its parent in vhdimg info.
. "$top_srcdir/tests/functions.sh"
requires psktool
requires sha256sum
requires_py nbd

# A umask that lets others read what is created with it: the children
# must be private by their own mode.
umask 022
img=$TMPD/base.vhd
"$VHDIMG" create "$img" 64M >/dev/null
# Something of the image's own to see through every child: 0x11 at 0-1 MiB.
cat >"$TMPD/fill.py" <<'PY'
import sys, nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
h.pwrite(b"\x11" * (1 << 20), 0)
h.flush()
h.shutdown()
PY
start_vhdnbd "$TMPD/fill.sock" "$img"
"$PY3" "$TMPD/fill.py" "$TMPD/fill.sock" || fail "cannot write the image's own data"
stop_vhdnbd
base_sum=$(sha256sum <"$img")

psk=$TMPD/keys.psk
psktool -u alice -p "$psk" >/dev/null 2>&1 || fail "psktool failed"
psktool -u bob -p "$psk" >/dev/null 2>&1 || fail "psktool failed"
# Two identities alike in their first 255 bytes (a key once cut there).
long=$(printf 'u%.0s' $(seq 255))
psktool -u "${long}-carol" -p "$psk" >/dev/null 2>&1 || fail "psktool failed"
psktool -u "${long}-dave" -p "$psk" >/dev/null 2>&1 || fail "psktool failed"

ov=$TMPD/state/persistent   # created by the server, with its missing parents
cat >"$TMPD/vhdnbd.conf" <<EOF
[global]
tls = on
tls-psk = $psk
[export persist]
image = $img
overlay = persistent
overlay-dir = $ov
[export scratch]
image = $img
overlay = discard
overlay-dir = $TMPD/discard
[export byaddr]
image = $img
overlay = persistent
overlay-key = address
overlay-dir = $TMPD/address
EOF
mkdir -p "$TMPD/discard"

# read-only = yes for every export leaves an overlay export nothing it may
# take: refused at startup, as read-only in its own section is, unless the
# section says read-only = no.
printf '[global]\nread-only = yes\n[export ov]\nimage = %s\noverlay = discard\n' "$img" \
  >"$TMPD/ro.conf"
if "$VHDNBD" -C "$TMPD/ro.conf" --check-config >"$TMPD/ro.out" 2>&1; then
  fail "an overlay export under read-only = yes for every export was accepted"
fi
grep -q "export 'ov': overlay = discard needs a writable export, but it is read-only" \
  "$TMPD/ro.out" || fail "no reason for refusing the read-only overlay: $(cat "$TMPD/ro.out")"
printf 'read-only = no\n' >>"$TMPD/ro.conf"
"$VHDNBD" -C "$TMPD/ro.conf" --check-config >"$TMPD/ro.out" 2>&1 ||
  fail "an overlay export that says read-only = no was refused: $(cat "$TMPD/ro.out")"

log=$TMPD/vhdnbd.log
# overlay-max from the command line: the image's header, BAT and two 2 MiB
# blocks fit in 5 MiB, a third block does not.
start_vhdnbd_tcp "$TMPD/sock" -v -b 127.0.0.1 -C "$TMPD/vhdnbd.conf" \
  -e "capped=$img,overlay=persistent,overlay-key=address,overlay-dir=$TMPD/capped,overlay-max=5M" \
  2>"$log"
port=$VHDNBD_PORT

# client.py PORT USER EXPORT ACTION...: USER "-" connects without TLS.
cat >"$TMPD/client.py" <<'PY'
import errno, sys, nbd
port, user, export, action = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
args = sys.argv[5:]
psk = sys.argv[0].rsplit("/", 1)[0] + "/keys.psk"

def connect():
    h = nbd.NBD()
    h.set_export_name(export)
    if user == "-":
        h.set_tls(nbd.TLS_DISABLE)
    else:
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_psk_file(psk)
        h.set_tls_username(user)
    h.connect_tcp("127.0.0.1", str(port))
    return h

def check(h, off, byte, n=65536):
    got = h.pread(n, off)
    want = bytes([byte]) * n
    assert got == want, "%s/%s: at %d expected 0x%02x, got 0x%02x.." % (
        user, export, off, byte, got[0])

if action == "write":        # write OFF BYTE: write 64 KiB, flush
    h = connect()
    h.pwrite(bytes([int(args[1], 0)]) * 65536, int(args[0]))
    h.flush()
    h.shutdown()
elif action == "expect":     # expect OFF BYTE [OFF BYTE...]
    h = connect()
    for i in range(0, len(args), 2):
        check(h, int(args[i]), int(args[i + 1], 0))
    h.shutdown()
elif action == "multi":      # two connections of one key share one child
    a, b = connect(), connect()
    assert a.can_multi_conn(), "persistent overlay without multi-conn"
    a.pwrite(b"\x77" * 4096, 8 << 20)
    a.flush()
    check(b, 8 << 20, 0x77, 4096)
    a.shutdown()
    b.shutdown()
elif action == "apart":      # apart OTHER: connected at once, neither sees the other
    a = connect()
    user = args[0]
    b = connect()
    a.pwrite(b"\x99" * 4096, 12 << 20)
    a.flush()
    check(b, 12 << 20, 0x00, 4096)
    b.pwrite(b"\x98" * 4096, 12 << 20)
    b.flush()
    check(a, 12 << 20, 0x99, 4096)
    a.shutdown()
    b.shutdown()
elif action == "discard":    # a fresh child on each connection
    a = connect()
    assert not a.can_multi_conn(), "discard overlay advertises multi-conn"
    check(a, 1 << 20, 0x00)
    a.pwrite(b"\xdd" * 65536, 1 << 20)
    a.pwrite(b"\xdd" * 65536, 0)
    a.flush()
    check(a, 1 << 20, 0xdd)
    b = connect()
    check(b, 1 << 20, 0x00)
    check(b, 0, 0x11)
    a.shutdown()
    b.shutdown()
elif action == "refused":    # connect must fail with this in the error
    try:
        connect()
    except nbd.Error as e:
        assert args[0] in (e.string or ""), "unexpected error: %s" % e.string
        print("refused:", e.string)
        sys.exit(0)
    sys.exit("connected, but should have been refused")
elif action == "fill":       # write 4 KiB at each OFF until one fails: ENOSPC
    h = connect()
    done = []
    for off in args:
        try:
            h.pwrite(b"\xcc" * 4096, int(off))
        except nbd.Error as e:
            assert e.errno in (errno.ENOSPC, "ENOSPC"), "write at %s: %s (errno %s)" % (off, e.string, e.errno)
            break
        done.append(off)
    else:
        sys.exit("no write failed with ENOSPC")
    h.flush()
    for off in done:
        check(h, int(off), 0xcc, 4096)
    h.shutdown()
    print(len(done))
elif action == "flood":      # flood N: N writes into new blocks, each failing with ENOSPC
    h = connect()
    for i in range(int(args[0])):
        try:
            h.pwrite(b"\xee" * 4096, (4 << 20) + (i % 28) * (2 << 20))
        except nbd.Error as e:
            assert e.errno in (errno.ENOSPC, "ENOSPC"), "write %d: %s (errno %s)" % (i, e.string, e.errno)
            continue
        sys.exit("write %d past overlay-max succeeded" % i)
    h.shutdown()
PY
client() { "$PY3" "$TMPD/client.py" "$port" "$@"; }

# --- persistent, by identity -----------------------------------------------
client alice persist write $((1 << 20)) 0xaa || fail "alice's write"
client bob persist write $((1 << 20)) 0xbb || fail "bob's write"
client alice persist write $((4 << 20)) 0xa4 || fail "alice's second write"
# New connections: each sees its own data over the image's.
client alice persist expect 0 0x11 $((1 << 20)) 0xaa $((4 << 20)) 0xa4 ||
  fail "alice does not see her own writes after reconnecting"
client bob persist expect 0 0x11 $((1 << 20)) 0xbb $((4 << 20)) 0 ||
  fail "bob sees alice's writes, or not his own"
client alice persist multi || fail "two connections of alice do not share one child"
client alice persist apart bob || fail "alice and bob, connected at once, share a child"
client "${long}-carol" persist write $((2 << 20)) 0xc1 || fail "the first long identity's write"
client "${long}-dave" persist expect $((2 << 20)) 0 ||
  fail "two identities that differ past byte 255 share a child"
client - persist refused "policy" || fail "a client without identity was not refused"
grep -q "export 'persist' refused: overlay-key = identity" "$log" ||
  fail "no log line for the client refused for want of an identity"
[ "$(stat -c %a "$ov")" = 700 ] || fail "$ov: mode $(stat -c %a "$ov"), not 700"
# Each child holds one client's data: private to the service whatever the
# umask lets through (022, set above), as its record is.
for c in "$ov"/*.vhd "$ov"/*.vhd.base; do
  [ "$(stat -c %a "$c")" = 600 ] || fail "$c: mode $(stat -c %a "$c"), not 600"
done
n=$(find "$ov" -name '*.vhd' | wc -l)
[ "$n" -eq 4 ] || fail "expected 4 children in $ov (alice, bob and the long ones), found $n"

# --- discard -----------------------------------------------------------------
# Empty files named as a killed server with this server's PID would have
# named its children (another PID namespace, PIDs wrapped): this server's
# children never take their names, and never remove them.
for i in 1 2 3 4 5 6 7 8; do
  : >"$TMPD/discard/d-scratch-$VHDNBD_PID-$i.vhd"
done
planted=$(ls -A "$TMPD/discard")
client alice scratch discard || fail "discard overlay (beside files named as its children were once)"
client alice scratch expect $((1 << 20)) 0 0 0x11 || fail "discard: old writes seen again"
[ "$(ls -A "$TMPD/discard")" = "$planted" ] ||
  fail "discard left or removed files: $(ls -A "$TMPD/discard")"
rm -f "$TMPD/discard/"*

# NBD_OPT_EXPORT_NAME (no option replies) reaches the overlay too: a raw
# client reads the image's data through a new discard child; the same
# option on an identity-keyed export without TLS gets the connection closed.
cat >"$TMPD/export-name.py" <<'PY'
import struct, sys, nbdraw
port, export, expect = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
c = nbdraw.Raw.tcp("127.0.0.1", port)
c.newstyle()
c.send_option(nbdraw.OPT_EXPORT_NAME, export)
if expect == "closed":
    try:
        c.recv(10)
    except nbdraw.Closed:
        sys.exit(0)
    sys.exit("EXPORT_NAME answered where it should have closed")
size, tflags = struct.unpack(">QH", c.recv(10))
assert size >= 1 << 20, size
c.send(struct.pack(">IHHQQI", nbdraw.REQUEST_MAGIC, 0, 0, 7, 0, 4096))  # READ 4 KiB at 0
magic, err, handle = struct.unpack(">IIQ", c.recv(16))
assert (magic, err, handle) == (nbdraw.SIMPLE_REPLY_MAGIC, 0, 7), (hex(magic), err, handle)
assert c.recv(4096) == b"\x11" * 4096, "EXPORT_NAME client did not read the image's data"
PY
"$PY3" "$TMPD/export-name.py" "$port" scratch data || fail "NBD_OPT_EXPORT_NAME on a discard overlay"
"$PY3" "$TMPD/export-name.py" "$port" persist closed ||
  fail "NBD_OPT_EXPORT_NAME without an identity was not closed"
# NBD_OPT_INFO answers as the same NBD_OPT_GO would: refused by policy,
# both of them, for a client without an identity.
"$PY3" - "$port" <<'PY' || fail "NBD_OPT_INFO and NBD_OPT_GO disagree on a client without an identity"
import sys, nbdraw
c = nbdraw.Raw.tcp("127.0.0.1", sys.argv[1])
c.newstyle()
for opt in (nbdraw.OPT_INFO, nbdraw.OPT_GO):
    typ, msg = c.option(opt, nbdraw.name_data("persist"))
    assert typ == nbdraw.REP_ERR_POLICY, "option %d: reply %#x %r" % (opt, typ, msg)
    assert b"needs a client TLS identity" in msg, msg
PY

# --- persistent, by address --------------------------------------------------
client - byaddr write $((2 << 20)) 0x5a || fail "write through the address overlay"
client - byaddr expect $((2 << 20)) 0x5a 0 0x11 || fail "address overlay lost its data"
ls "$TMPD/address" | grep -q '127\.0\.0\.1' || fail "address child not named after 127.0.0.1"

# --- overlay-max ---------------------------------------------------------------
n=$(client - capped fill 0 $((2 << 20)) $((4 << 20)) $((6 << 20))) ||
  fail "overlay-max: writes did not end in ENOSPC with earlier data intact"
[ "$n" -eq 2 ] || fail "overlay-max: $n writes before ENOSPC, expected 2"
client - capped expect 4096 0x11 || fail "capped child lost the image's data"
"$PY3" - "$port" <<'PY' || fail "capped overlay after reconnecting"
import sys, nbd
h = nbd.NBD()
h.set_export_name("capped")
h.set_tls(nbd.TLS_DISABLE)
h.connect_tcp("127.0.0.1", sys.argv[1])
assert h.pread(4096, 0) == b"\xcc" * 4096
assert h.pread(4096, 2 << 20) == b"\xcc" * 4096
PY
# Past overlay-max every write fails, each answered with ENOSPC, but the log
# says so at most once a minute per child, and counts the rest when the
# child closes: a client cannot flood it.
client - capped flood 300 || fail "overlay-max: a flood of writes did not all fail with ENOSPC"
capped=$(ls "$TMPD/capped"/*.vhd)
[ "$(stat -c %s "$capped")" -le $((5 << 20)) ] ||
  fail "capped child grew to $(stat -c %s "$capped") bytes, past 5M"

stop_vhdnbd
! grep -q "AddressSanitizer\|runtime error\|LeakSanitizer" "$log" ||
  fail "sanitizer report: $(cat "$log")"
# 301 ENOSPC replies (fill's one, flood's 300): a line or two for them,
# and the summaries at close count the rest.
lines=$(grep -c ': error 28: ' "$log")
[ "$lines" -ge 1 ] && [ "$lines" -le 2 ] || fail "$lines log lines for 301 ENOSPC failures"
counted=$(sed -n 's/.*: \([0-9]*\) more ENOSPC failures since the last line that said so$/\1/p' "$log" |
  awk '{ n += $1 } END { print n + 0 }')
[ $((lines + counted)) -eq 301 ] ||
  fail "ENOSPC failures: $lines logged and $counted counted at close, not 301 in all"

# --- the image and the children ------------------------------------------------
[ "$(sha256sum <"$img")" = "$base_sum" ] || fail "the image was written"
for c in "$ov"/*.vhd "$TMPD/address"/*.vhd "$capped"; do
  "$VHDIMG" check "$c" >"$TMPD/check.out" 2>&1 || fail "vhdimg check $c: $(cat "$TMPD/check.out")"
  "$VHDIMG" info "$c" >"$TMPD/info.out" 2>&1 || fail "vhdimg info $c: $(cat "$TMPD/info.out")"
  grep -q "^type: differencing" "$TMPD/info.out" || fail "$c is not a differencing image"
  grep -q "1: .*base\.vhd (dynamic" "$TMPD/info.out" ||
    fail "$c does not name the image as its parent: $(cat "$TMPD/info.out")"
done
echo "PASS"
