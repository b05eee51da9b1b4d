#!/bin/bash
# WRITE payloads spliced from the socket into the file.  A WRITE of 128 KiB
# to 1 MiB on a Unix socket has its payload moved into a pipe by
# splice(2), and from there into the image: any range of whole sectors,
# and others where they need no read-modify-write (a fixed image, or
# sectors all marked already); elsewhere the worker reads the pipe back
# and writes as usual.
#  - when: while other connections have bytes in flight, and from a Unix
#    socket also while the client has another request outstanding (one
#    client's WRITEs at depth 1 measured faster copied, over TCP one
#    client's at any depth).  Below, a second client that leaves a 16 MiB
#    READ reply unread keeps bytes in flight where splicing is wanted;
#  - libnbd writes 128 KiB to 1 MiB at any alignment, across blocks, some
#    with FUA, twice over the same ranges (first into new blocks, then in
#    place), into a fixed image, a dynamic one in QEMU's layout (block data
#    512 bytes into a page), one in vhdimg's and a differencing child over
#    a parent with data; over a Unix socket; one at a time with no other
#    client over a Unix socket and over TCP (copied: none spliced).  Every byte
#    is read back, and the closed image is read against the client's model
#    by qemu-img (by vhdimg convert for the differencing chain: QEMU's vpc
#    driver reads no parent).  vhdnbd_writes_spliced_total must equal the
#    count the client works out from the rule above, and be 0 with
#    VHDNBD_SPLICE_WRITES=0 or --no-splice; on a file system that takes
#    no splice (injected) every WRITE still succeeds, made from memory;
#  - two TCP clients with eight 512 KiB WRITEs in flight each: some are
#    spliced (other connections have bytes in flight), all read back; one
#    such client over a Unix socket: some spliced (its own in flight); one
#    over TCP: none;
#  - a raw client sends a 1 MiB payload in 512-byte pieces (more pieces
#    than the pipe has pages: the payload moves to memory mid-way), one in
#    the same send as its header (its first bytes come with the header and
#    stay in memory, ahead of the pipe's), one whose header comes alone
#    before its payload, and one it abandons half-sent; the data is right,
#    the middle two are spliced, and the server serves the next client;
#    one client sends exactly as many 512-byte pieces as the pipe has
#    slots and leaves, and the server must notice within 5 s (splice(2)
#    says EAGAIN for a full pipe even at the socket's EOF).
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires_py nbd

M=$((1024 * 1024))
SIZE=$((24 * M))

cat >"$TMPD/writes.py" <<'PY'
# writes.py URI SEED MODEL FIXED HOLD: WRITEs as described above; the model is
# written to MODEL (raw) for qemu-img to compare with.  Prints how many of
# them the server can splice (must, with HOLD 1): on a fixed image all; on
# a dynamic or differencing one those of whole sectors, and those whose
# every sector touched was written before (marked in the image's bitmap).
import random, sys, time, nbd
uri, seed, model_path, fixed = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
hold = sys.argv[5] == "1"
if hold:
    # Bytes in flight on another connection: a READ reply left unread (a
    # simple reply, which carries every byte, holes too).
    import nbdraw
    h2 = nbdraw.Raw.unix(uri.split("socket=", 1)[1])
    h2.newstyle()
    h2.go()
    h2.send(nbdraw.request(0, 0, 16 << 20, 1))
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
rng = random.Random(seed)
with open(model_path + ".base", "rb") as f:
    model = bytearray(f.read())
assert len(model) == size, "base model %d bytes, disk %d" % (len(model), size)
M = 1 << 20
sizes = [128 * 1024, 128 * 1024 + 1, 300000, 512 * 1024, 1000 * 1024, M]
ranges = []
for i in range(24):
    n = rng.choice(sizes)
    off = rng.randrange(size - n)
    if i % 3 == 0:
        off &= ~511
    if i % 6 == 1:
        off = (rng.randrange(1, size // (2 * M)) * 2 * M) - n // 2  # across blocks
    ranges.append((off, n))
marked = bytearray(size // 512)
expected = 0
for rnd in range(2):
    for i, (off, n) in enumerate(ranges):
        s0, s1 = off // 512, (off + n + 511) // 512
        if fixed or (off % 512 == 0 and n % 512 == 0) or all(marked[s0:s1]):
            expected += 1
        marked[s0:s1] = b"\1" * (s1 - s0)
        d = rng.randbytes(n)
        fua = nbd.CMD_FLAG_FUA if (i + rnd) % 5 == 0 and h.can_fua() else 0
        h.pwrite(d, off, fua)
        model[off:off + n] = d
        if not hold:
            # A worker that sent the reply itself counts it off just after
            # the send: a pause, so that it has (however the threads are
            # scheduled on a loaded machine) before the next header comes.
            time.sleep(0.01)
h.flush()
for off in range(0, size, 4 * M):
    n = min(4 * M, size - off)
    got = h.pread(n, off)
    if got != bytes(model[off:off + n]):
        bad = next(i for i in range(n) if got[i] != model[off + i])
        sys.exit("byte %d reads %#x, the model has %#x" % (off + bad, got[bad], model[off + bad]))
with open(model_path, "wb") as f:
    f.write(model)
h.shutdown()
print(expected)
PY

# image KIND PATH: a fresh image of that kind, and PATH.model.base with what
# it reads as now.
image() {
  local kind=$1 img=$2
  rm -f "$img" "$TMPD/parent.vhd"
  case $kind in
    fixed) "$VHDIMG" create -t fixed --exact "$img" $SIZE >/dev/null ;;
    qemu) qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$img" $SIZE ;;
    vhdimg) "$VHDIMG" create --exact "$img" $SIZE >/dev/null ;;
    diff)
      "$VHDIMG" create --exact "$TMPD/parent.vhd" $SIZE >/dev/null
      qemu-io -f vpc -c "write -P 5 $((3 * M)) $((9 * M))" "$TMPD/parent.vhd" >/dev/null ||
        fail "qemu-io cannot fill the parent"
      "$VHDIMG" create -b "$TMPD/parent.vhd" "$img" >/dev/null
      ;;
  esac
  to_raw "$kind" "$img" "$img.model.base"
}

# to_raw KIND IMG OUT: the image's virtual disk as a raw file, read by
# qemu-img; a differencing chain by vhdimg (QEMU's vpc driver reads a
# child without its parent).
to_raw() {
  if [ "$1" = diff ]; then
    "$VHDIMG" convert -O raw "$2" "$3" >/dev/null || fail "vhdimg convert cannot read $2"
  else
    qemu-img convert -f vpc -O raw "$2" "$3" || fail "qemu-img cannot read $2"
  fi
}

# run KIND TRANSPORT ENV ARGS...: the libnbd writes against a fresh image;
# sets spliced (the counter at the end).
run() {
  local kind=$1 transport=$2 hold=$3 env=$4 uri
  shift 4
  local img=$TMPD/$kind.vhd prom=$TMPD/m.prom
  image "$kind" "$img"
  rm -f "$prom"
  if [ "$transport" = tcp ]; then
    export $env
    start_vhdnbd_tcp "$TMPD/sock" --metrics-file "$prom" --metrics-interval 1 "$@" "$img" \
      2>"$TMPD/server.log"
    uri="nbd://127.0.0.1:$VHDNBD_PORT/"
  else
    export $env
    start_vhdnbd "$TMPD/sock" --metrics-file "$prom" --metrics-interval 1 "$@" "$img" \
      2>"$TMPD/server.log"
    uri="nbd+unix:///?socket=$TMPD/sock"
  fi
  unset VHDNBD_SPLICE_WRITES
  local fixed=0
  [ "$kind" != fixed ] || fixed=1
  expected=$("$PY3" "$TMPD/writes.py" "$uri" 5 "$img.model" $fixed $hold) ||
    fail "$kind over $transport ($env $*): the WRITEs did not read back (see above)"
  wait_requests_ok "$prom" 48 WRITE
  stop_vhdnbd
  spliced=$(export_metric "$prom" writes_spliced_total)
  [ -n "$spliced" ] || fail "no writes_spliced_total in the metrics file"
  to_raw "$kind" "$img" "$TMPD/out.raw"
  cmp "$TMPD/out.raw" "$img.model" || fail "$kind over $transport: the closed image reads other bytes"
  echo "$kind over $transport (hold $hold, $env $*): $spliced of 48 WRITEs spliced, $expected spliceable"
}

for kind in fixed qemu vhdimg diff; do
  run $kind unix 1 VHDNBD_SPLICE_WRITES=1
  [ "$spliced" -eq "$expected" ] || fail "$kind: $spliced WRITEs spliced, $expected expected"
  # Some of both kinds, or the counts say little.
  [ "$kind" = fixed ] || [ "$expected" -lt 48 ] || fail "$kind: every WRITE spliceable"
done
# Not from one TCP client (slower there, measured): the same data, all
# copied.
# Alone and one at a time: copied.  A worker counts its reply sent just
# after sending it, so a client quick enough may have its next header read
# while the last still counts as outstanding; the client pauses 10 ms
# after each reply, but a worker preempted for longer may still leave a
# few spliced.
run vhdimg unix 0 VHDNBD_SPLICE_WRITES=1
[ "$expected" -ge 12 ] || fail "only $expected of the WRITEs could be spliced at all"
[ "$spliced" -le 3 ] ||
  fail "one client, one WRITE at a time: $spliced of $expected spliceable WRITEs spliced, at most 3 expected"
run vhdimg tcp 0 VHDNBD_SPLICE_WRITES=1
[ "$spliced" -eq 0 ] || fail "TCP: $spliced WRITEs spliced, none expected"

# Clients at depth 8: two over TCP (other connections' WRITEs in flight;
# four clients were faster spliced), one over a Unix socket (its own in
# flight), one over TCP (none spliced).
cat >"$TMPD/depth.py" <<'PY'
# depth.py URI N: N clients write at once, each its own 8 MiB with eight
# 512 KiB WRITEs in flight; each reads its data back.
import random, sys, threading, nbd
uri, nclients = sys.argv[1], int(sys.argv[2])
K = 1024
errors = []
def client(i):
    try:
        h = nbd.NBD()
        h.connect_uri(uri)
        rng = random.Random(i)
        base = i * 8 * 1024 * K
        data = rng.randbytes(8 * 1024 * K)
        for rnd in range(4):
            cookies = []
            for j in range(8):
                off = (j * 2 + rnd % 2) * 512 * K
                cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(
                    bytearray(data[off:off + 512 * K])), base + off))
            pending = set(cookies)
            while pending:
                for c in list(pending):
                    if h.aio_command_completed(c):
                        pending.discard(c)
                if pending:
                    h.poll(-1)
        assert h.pread(len(data), base) == data, "client %d: read back differs" % i
        h.shutdown()
    except Exception as e:
        errors.append("client %d: %s" % (i, e))
t = [threading.Thread(target=client, args=(i,)) for i in range(nclients)]
for x in t: x.start()
for x in t: x.join()
if errors:
    sys.exit("; ".join(errors))
PY
# depth TRANSPORT N: N clients at depth 8; sets $spliced.
depth() {
  local transport=$1 n=$2 uri
  image vhdimg "$TMPD/depth.vhd"
  rm -f "$TMPD/m.prom"
  if [ "$transport" = tcp ]; then
    start_vhdnbd_tcp "$TMPD/sock" --metrics-file "$TMPD/m.prom" --metrics-interval 1 \
      "$TMPD/depth.vhd" 2>"$TMPD/server.log"
    uri="nbd://127.0.0.1:$VHDNBD_PORT/"
  else
    start_vhdnbd "$TMPD/sock" --metrics-file "$TMPD/m.prom" --metrics-interval 1 \
      "$TMPD/depth.vhd" 2>"$TMPD/server.log"
    uri="nbd+unix:///?socket=$TMPD/sock"
  fi
  "$PY3" "$TMPD/depth.py" "$uri" "$n" ||
    fail "$n client(s) over $transport at depth 8: the WRITEs did not read back"
  wait_requests_ok "$TMPD/m.prom" $((n * 32)) WRITE
  stop_vhdnbd
  spliced=$(export_metric "$TMPD/m.prom" writes_spliced_total)
  "$VHDIMG" check "$TMPD/depth.vhd" >/dev/null ||
    fail "vhdimg check failed after $n client(s) over $transport"
  echo "$n client(s) over $transport at depth 8: $spliced of $((n * 32)) WRITEs spliced"
}
depth tcp 2
[ "${spliced:-0}" -ge 1 ] || fail "two TCP clients at once: no WRITE spliced"
depth unix 1
[ "${spliced:-0}" -ge 1 ] || fail "one Unix client at depth 8: no WRITE spliced"
depth tcp 1
[ "${spliced:-0}" -eq 0 ] || fail "one TCP client at depth 8: $spliced WRITEs spliced, none expected"
run fixed unix 1 VHDNBD_SPLICE_WRITES=0
[ "$spliced" -eq 0 ] || fail "VHDNBD_SPLICE_WRITES=0, yet $spliced WRITEs spliced"
run fixed unix 1 VHDNBD_SPLICE_WRITES=1 --no-splice
[ "$spliced" -eq 0 ] || fail "--no-splice, yet $spliced WRITEs spliced"
# A file system that takes no splice (EINVAL from every splice into the
# image, injected): each WRITE is made from memory instead, none fails,
# the export is not latched.
run vhdimg unix 1 "VHDNBD_FAULT_AFTER=0 VHDNBD_FAULT_MODE=no-splice VHDNBD_FAULT_ERRNO=EINVAL"
unset VHDNBD_FAULT_AFTER VHDNBD_FAULT_MODE VHDNBD_FAULT_ERRNO
[ "$spliced" -eq 0 ] || fail "no splices taken, yet $spliced WRITEs counted as spliced"

cat >"$TMPD/raw.py" <<'PY'
# raw.py SOCK LOG: WRITEs whose payload comes in odd ways, each read back.
import random, struct, sys, time
import nbdraw
sock, log = sys.argv[1], sys.argv[2]
def connect():
    c = nbdraw.Raw.unix(sock)
    c.newstyle()
    c.go()
    return c
CMD_READ, CMD_WRITE = 0, 1
M = 1 << 20
rng = random.Random(3)
def header(cmd, cookie, off, length):
    return struct.pack(">IHHQQI", nbdraw.REQUEST_MAGIC, 0, cmd, cookie, off, length)
def reply(c, cookie, n=0):
    magic, err, got = struct.unpack(">IIQ", c.recv(16))
    assert magic == nbdraw.SIMPLE_REPLY_MAGIC, "bytes %08x where a reply header should start" % magic
    assert err == 0 and got == cookie, "reply %d error %d, expected cookie %d" % (got, err, cookie)
    return c.recv(n) if n else b""
# Bytes in flight on another connection (a READ reply left unread), so
# that these WRITEs, one at a time, are spliced.
hold = connect()
hold.send(header(CMD_READ, 99, 0, 16 * M))
time.sleep(0.1)
c = connect()
# In 512-byte pieces: some in the same segment as the header.
d1 = rng.randbytes(M)
msg = header(CMD_WRITE, 1, 2 * M, M) + d1
c.send(msg[:28 + 5000])
for i in range(28 + 5000, len(msg), 512):
    c.send(msg[i:i + 512])
    if i % 65536 < 512:
        time.sleep(0.002)
reply(c, 1)
# Header and payload in one send: the loop reads the header with the
# payload's first bytes, which stay in memory; the rest goes to the pipe.
d3 = rng.randbytes(M)
c.send(header(CMD_WRITE, 7, 10 * M, M) + d3)
reply(c, 7)
c.send(header(CMD_READ, 8, 10 * M, M))
assert reply(c, 8, M) == d3, "the WRITE sent in one piece reads back other bytes"
# The header alone, then the payload in one piece.
d2 = rng.randbytes(512 * 1024)
c.send(header(CMD_WRITE, 2, 5 * M + 512, len(d2)))
time.sleep(0.1)
c.send(d2)
reply(c, 2)
c.send(header(CMD_READ, 3, 2 * M, M))
assert reply(c, 3, M) == d1, "the WRITE sent in pieces reads back other bytes"
c.send(header(CMD_READ, 4, 5 * M + 512, len(d2)))
assert reply(c, 4, len(d2)) == d2, "the WRITE whose header came alone reads back other bytes"
# Half a payload, then gone.
c.send(header(CMD_WRITE, 5, 8 * M, M) + rng.randbytes(M // 2))
c.close()
time.sleep(0.2)
c = connect()
c.send(header(CMD_READ, 6, 2 * M, M))
assert reply(c, 6, M) == d1, "after a client left mid-payload, the data read back changed"
# A payload whose 512-byte pieces take every slot of the pipe, then EOF:
# splice(2) then says EAGAIN for the full pipe even at the socket's end,
# and the server must still see the client go (not only at the payload
# timeout, 30 s, spinning meanwhile).  The pipe is sized as the server
# sizes its pool's.
import fcntl, os
r, w = os.pipe()
try:
    size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, M + os.sysconf("SC_PAGE_SIZE"))
except OSError:
    size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, M)
os.close(r)
os.close(w)
slots = size // os.sysconf("SC_PAGE_SIZE")
def gone_count():
    return open(log).read().count("in the middle of a request")
before = gone_count()
e = connect()
e.send(header(CMD_WRITE, 9, 12 * M, M))
time.sleep(0.2)  # header read alone: the pieces go to the pipe
for i in range(slots):
    e.s.send(b"\xab" * 512)
e.close()
end = time.monotonic() + 5
while gone_count() == before and time.monotonic() < end:
    time.sleep(0.05)
assert gone_count() > before, \
    "a client gone after filling the pipe's %d slots was not noticed within 5 s" % slots
c.send(header(CMD_READ, 10, 2 * M, M))
assert reply(c, 10, M) == d1, "after a client left with the pipe full, the data read back changed"
hold.close()
print("ok")
PY

three_writes_ok() { [ "$(requests_ok "$prom" WRITE)" -ge 3 ]; }

for kind in fixed vhdimg; do
  img=$TMPD/$kind.vhd
  image $kind "$img"
  prom=$TMPD/m.prom
  rm -f "$prom"
  if [ $kind = vhdimg ]; then
    # Allocated first, so that the WRITEs go in place.
    qemu-io -f vpc -c "write -P 7 0 $SIZE" "$img" >/dev/null || fail "qemu-io cannot fill $img"
  fi
  start_vhdnbd "$TMPD/sock" -vv --metrics-file "$prom" --metrics-interval 1 "$img" \
    2>"$TMPD/server.log"
  "$PY3" "$TMPD/raw.py" "$TMPD/sock" "$TMPD/server.log" || fail "$kind: WRITEs with odd payloads (see above)"
  wait_for 30 "the metrics file counting 3 WRITEs" three_writes_ok
  stop_vhdnbd
  grep -q "payload pipe full" "$TMPD/server.log" ||
    fail "$kind: the payload sent in 512-byte pieces never filled a pipe (log: $TMPD/server.log)"
  spliced=$(export_metric "$prom" writes_spliced_total)
  [ "$spliced" -ge 2 ] ||
    fail "$kind: $spliced spliced; the WRITEs sent in one piece and after their header alone were not both"
  echo "$kind: odd payloads read back, $spliced spliced"
done
echo "ok"
