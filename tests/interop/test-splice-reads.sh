#!/bin/bash
# Large READs spliced from the page cache into the socket (--no-splice
# turns it off).
#  - nbdcopy (4 connections, 1 MiB requests) and qemu-img compare read a
#    fixed image QEMU wrote, a dynamic image vhdimg wrote (block data
#    4 KiB-aligned) and a differencing child holding part of the data over
#    it, over a Unix socket and TCP: the bytes are the image's, and
#    vhdnbd_reads_spliced_total counts the READs; with --no-splice the same
#    bytes and none spliced.  A dynamic image QEMU wrote (block data mostly
#    inside a page) is mostly copied when writable, spliced when read-only.
#  - Over TCP a READ alone is spliced, eight pipelined at once are copied
#    but for the first one or two.
#  - A raw client pipelines 512 KiB READs with 4 KiB READs and FLUSHes and
#    waits before reading (so the socket fills and the rest of a spliced
#    reply goes through a copy), in simple and structured replies: every
#    byte is parsed.  A WRITE pipelined before a READ of its range shows in
#    it.  A READ pipelined before a TRIM of its whole block, a FLUSH and a
#    WRITE of a new block that takes the freed space returns the old bytes
#    (or zeros), never the new block's.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires nbdcopy
requires_py nbd

M=$((1024 * 1024))
raw=$TMPD/disk.raw
head -c $((24 * M)) /dev/urandom >"$raw"
qemu-img convert -q -f raw -O vpc -o subformat=fixed,force_size=on "$raw" "$TMPD/fixed.vhd"
qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on "$raw" "$TMPD/qemu-dyn.vhd"
"$VHDIMG" convert -f raw -O dynamic --exact "$raw" "$TMPD/dyn.vhd" >/dev/null
"$VHDIMG" create -t differencing -b "$TMPD/dyn.vhd" "$TMPD/child.vhd" >/dev/null
# The child holds its own bytes in two places (one block-aligned, one
# not); the rest is the parent's.
"$top_builddir/vhd-write-helper" "$TMPD/child.vhd" $((3 * M)) $M 0x5a $((9 * M + 4096)) $M 0xc3 ||
  fail "vhd-write-helper could not write the child"
"$PY3" - "$TMPD" <<'PY'
import sys
d = sys.argv[1]
data = bytearray(open(d + "/disk.raw", "rb").read())
M = 1 << 20
data[3 * M:4 * M] = b"\x5a" * M
data[9 * M + 4096:10 * M + 4096] = b"\xc3" * M
open(d + "/child.raw", "wb").write(data)
PY

spliced() {
  sed -n 's/^vhdnbd_reads_spliced_total{export=""} //p' "$1"
}

# serve IMAGE RAW EXPECT [OPTIONS...]: copies the export with nbdcopy over
# a Unix socket (24 READs of 1 MiB) and compares it over TCP with qemu-img;
# EXPECT is how many READs were spliced: "all" 24 or more, "part" fewer
# but some, "none".
serve() {
  local img=$1 want=$2 expect=$3 prom=$TMPD/m.prom n i
  shift 3
  rm -f "$prom" "$TMPD/copy.raw"
  start_vhdnbd_tcp "$TMPD/sock" --metrics-file "$prom" --metrics-interval 1 "$@" "$img" \
    2>>"$TMPD/server.log"
  nbdcopy --connections=4 --requests=4 --request-size=$M \
    "nbd+unix:///?socket=$TMPD/sock" "$TMPD/copy.raw" || fail "$img $*: nbdcopy failed"
  cmp -s "$want" "$TMPD/copy.raw" || fail "$img $*: nbdcopy read other bytes"
  qemu-img compare -q -f raw "$want" "nbd://127.0.0.1:$VHDNBD_PORT/" ||
    fail "$img $*: qemu-img compare over TCP found other bytes"
  for ((i = 0; i < 300; i++)); do
    n=$(spliced "$prom" 2>/dev/null)
    [ -n "$n" ] && { [ "$n" -ge 24 ] || [ "$expect" != all ]; } && break
    sleep 0.1
  done
  stop_vhdnbd
  n=$(spliced "$prom")
  echo "$(basename "$img") $*: $n READs spliced"
  case $expect in
  all) [ "$n" -ge 24 ] || fail "$img $*: only $n READs spliced" ;;
  part) [ "$n" -gt 0 ] && [ "$n" -lt 24 ] || fail "$img $*: $n READs spliced, expected 1 to 23" ;;
  none) [ "$n" -eq 0 ] || fail "$img $*: $n READs spliced, expected none" ;;
  esac
}

serve "$TMPD/fixed.vhd" "$raw" all
serve "$TMPD/fixed.vhd" "$raw" none --no-splice
serve "$TMPD/dyn.vhd" "$raw" all
serve "$TMPD/dyn.vhd" "$raw" none --no-splice
# 1 MiB READs of the child: 2 straddle the block it holds in part.
serve "$TMPD/child.vhd" "$TMPD/child.raw" part
# QEMU places blocks 2 MiB + 512 bytes apart: only every eighth block's data
# starts on a page, and only those are spliced while the image is writable.
serve "$TMPD/qemu-dyn.vhd" "$raw" part
serve "$TMPD/qemu-dyn.vhd" "$raw" all --read-only

# Over TCP a READ is spliced only while it is its client's one request
# (several spliced 1 MiB replies in flight were slower there than copies):
# one READ alone, waited for, is spliced; eight sent at once are copied but
# for the first one or two, which the server may take while still alone.
prom=$TMPD/tcp.prom
start_vhdnbd_tcp "$TMPD/sock" --metrics-file "$prom" --metrics-interval 1 "$TMPD/fixed.vhd" \
  2>>"$TMPD/server.log"
"$PY3" - "$VHDNBD_PORT" "$raw" <<'PY' || fail "TCP: READs alone and pipelined read wrong bytes"
import struct, sys, nbdraw
M = 1 << 20
c = nbdraw.Raw.tcp("127.0.0.1", sys.argv[1])
c.newstyle()
c.go("")
want = open(sys.argv[2], "rb").read()
def replies(waiting):
    """Replies in any order: cookie -> offset read."""
    while waiting:
        magic, err, ck = struct.unpack(">IIQ", c.recv(16))
        assert magic == nbdraw.SIMPLE_REPLY_MAGIC and err == 0 and ck in waiting, \
            (hex(magic), err, ck)
        off = waiting.pop(ck)
        assert c.recv(M) == want[off:off + M], "READ at %d: other bytes" % off
c.send(nbdraw.request(0, 0, M, cookie=1))
replies({1: 0})
c.send(b"".join(nbdraw.request(0, i * M, M, cookie=10 + i) for i in range(8)))
replies({10 + i: i * M for i in range(8)})
PY
# The metrics file is written every second.
sleep 2.5
n=$(spliced "$prom")
stop_vhdnbd
echo "TCP: $n of 9 READs spliced"
[ "$n" -ge 1 ] && [ "$n" -le 3 ] || fail "TCP: $n of 9 READs spliced, expected the lone one and at most two of eight pipelined"

cat >"$TMPD/slow.py" <<'PY'
# slow.py unix SOCK | tcp PORT, RAWFILE, simple|structured: rounds of
# 512 KiB READs pipelined with 4 KiB READs and FLUSHes, the client waiting
# 0.3 s before reading each round's replies; then a WRITE before a READ of
# its range, and a READ before a TRIM of its block, a FLUSH and a WRITE of
# a new block.  Every byte parsed.  The image is 24 MiB, 2 MiB blocks.
import random, struct, sys, time
import nbdraw
c = nbdraw.Raw.unix(sys.argv[2]) if sys.argv[1] == "unix" else nbdraw.Raw.tcp("127.0.0.1", sys.argv[2])
data = bytearray(open(sys.argv[3], "rb").read())
structured = sys.argv[4] == "structured"
c.newstyle()
if structured:
    typ, _ = c.option(nbdraw.OPT_STRUCTURED_REPLY)
    assert typ == nbdraw.REP_ACK, "structured replies refused: %#x" % typ
c.go()
CMD_READ, CMD_WRITE, CMD_FLUSH, CMD_TRIM = 0, 1, 3, 4
STRUCTURED_MAGIC, TYPE_NONE, TYPE_OFFSET_DATA, TYPE_OFFSET_HOLE, FLAG_DONE = 0x668e33ef, 0, 1, 2, 1
K, M = 1024, 1 << 20
rng = random.Random(11)
def request(cmd, cookie, off, length, payload=b""):
    c.send(struct.pack(">IHHQQI", nbdraw.REQUEST_MAGIC, 0, cmd, cookie, off, length) + payload)
# One whole reply: (cookie, bytes of a READ with holes as zeros, or None).
def reply(want):
    magic = struct.unpack(">I", c.recv(4))[0]
    if magic == nbdraw.SIMPLE_REPLY_MAGIC:
        err, cookie = struct.unpack(">IQ", c.recv(12))
        assert err == 0, "request %d failed: %d" % (cookie, err)
        off, length, is_read = want[cookie]
        return cookie, c.recv(length) if is_read else None
    assert magic == STRUCTURED_MAGIC and structured, "bytes %08x where a reply should start" % magic
    got, cookie = {}, None
    while True:
        flags, typ, cookie, length = struct.unpack(">HHQI", c.recv(16))
        payload = c.recv(length)
        if typ == TYPE_OFFSET_DATA:
            got[struct.unpack(">Q", payload[:8])[0]] = payload[8:]
        elif typ == TYPE_OFFSET_HOLE:
            o, n = struct.unpack(">QI", payload)
            got[o] = bytes(n)
        else:
            assert typ == TYPE_NONE, "chunk type %d" % typ
        if flags & FLAG_DONE:
            break
        assert struct.unpack(">I", c.recv(4))[0] == STRUCTURED_MAGIC, "a broken structured reply"
    off, length, is_read = want[cookie]
    if not is_read:
        return cookie, None
    joined = b"".join(got[o] for o in sorted(got))
    assert len(joined) == length and (not got or min(got) == off), "reply %d: bad chunks" % cookie
    return cookie, joined
def collect(want):
    out = {}
    while len(out) < len(want):
        ck, body = reply(want)
        assert ck in want and ck not in out, "cookie %d" % ck
        out[ck] = body
    return out

# Block 10 trimmed first: unallocated, for the last part below.
request(CMD_TRIM, 1, 10 * 2 * M, 2 * M)
request(CMD_FLUSH, 2, 0, 0)
collect({1: (10 * 2 * M, 2 * M, False), 2: (0, 0, False)})
data[10 * 2 * M:11 * 2 * M] = bytes(2 * M)

for rnd in range(10):
    want, cookie = {}, 1
    for i in range(6):
        off = rng.randrange(len(data) // 512 - 1024) * 512
        request(CMD_READ, cookie, off, 512 * K); want[cookie] = (off, 512 * K, True); cookie += 1
        off = rng.randrange(len(data) // 512 - 8) * 512
        request(CMD_READ, cookie, off, 4 * K); want[cookie] = (off, 4 * K, True); cookie += 1
        if i % 3 == 0:
            request(CMD_FLUSH, cookie, 0, 0); want[cookie] = (0, 0, False); cookie += 1
    time.sleep(0.3)
    for ck, body in collect(want).items():
        off, length, is_read = want[ck]
        if is_read:
            assert body == bytes(data[off:off + length]), \
                "round %d: READ %d at %d: not the image's bytes" % (rnd, ck, off)

# A WRITE before a READ of its range: the READ shows it.
off = 5 * M
new = bytes(rng.randbytes(M))
request(CMD_WRITE, 1, off, M, new)
request(CMD_READ, 2, off - 64 * K, M)
want = {1: (off, M, False), 2: (off - 64 * K, M, True)}
got = collect(want)
data[off:off + M] = new
assert got[2] == bytes(data[off - 64 * K:off - 64 * K + M]), "a READ missed the WRITE before it"

# A READ, then a TRIM of its whole 2 MiB block, a FLUSH and a WRITE of
# block 10 (unallocated: it takes the space freed last, once flushed): the
# READ's reply holds the block's old bytes, or zeros, never block 10's.
blk, newblk = 6 * (2 * M), 10 * (2 * M)
old = bytes(data[blk:blk + M])
fresh = bytes(rng.randbytes(2 * M))
request(CMD_READ, 1, blk, M)
request(CMD_TRIM, 2, blk, 2 * M)
request(CMD_FLUSH, 3, 0, 0)
request(CMD_WRITE, 4, newblk, 2 * M, fresh)
request(CMD_FLUSH, 5, 0, 0)
time.sleep(0.3)
want = {1: (blk, M, True), 2: (blk, 2 * M, False), 3: (0, 0, False), 4: (newblk, 2 * M, False),
        5: (0, 0, False)}
got = collect(want)[1]
for s in range(0, M, 512):
    sector = got[s:s + 512]
    assert sector == old[s:s + 512] or sector == bytes(512), \
        "the READ before a TRIM shows other bytes at +%d%s" % (
            s, " (the new block's)" if sector == fresh[s:s + 512] else "")
print("ok")
PY

# Each run writes to the image: a fresh copy of the dynamic one per mode.
for mode in simple structured; do
  cp "$TMPD/dyn.vhd" "$TMPD/slow.vhd"
  start_vhdnbd_tcp "$TMPD/sock2" "$TMPD/slow.vhd" 2>>"$TMPD/server.log"
  "$PY3" "$TMPD/slow.py" unix "$TMPD/sock2" "$raw" $mode >/dev/null ||
    fail "Unix socket, $mode replies: a READ reply was wrong (see above)"
  stop_vhdnbd
  cp "$TMPD/dyn.vhd" "$TMPD/slow.vhd"
  start_vhdnbd_tcp "$TMPD/sock2" "$TMPD/slow.vhd" 2>>"$TMPD/server.log"
  "$PY3" "$TMPD/slow.py" tcp "$VHDNBD_PORT" "$raw" $mode >/dev/null ||
    fail "TCP, $mode replies: a READ reply was wrong (see above)"
  stop_vhdnbd
done
echo "ok"
