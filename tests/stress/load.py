#!/usr/bin/python3
"""Load driver for test-load.sh.

usage: load.py SOCKET SERVER_PID CONNECTIONS SECONDS SLOT RSS_LIMIT_MB

The export must be CONNECTIONS * SLOT + 32 MiB bytes (the last 32 MiB are
scratch space for hostile writers).

CONNECTIONS good clients (libnbd, one thread each) each own a SLOT-byte range
of the export and, for SECONDS, write, zero, flush and read back their range
against a private model: every read must match.  Meanwhile hostile clients
come and go on raw sockets: garbage bytes, clients that connect and stall,
a client that sends reads but never reads the replies, one that pipelines
32 MiB reads and never reads the replies, option floods, a write cut off in
the middle of its payload, a 32 MiB write whose payload trickles in a byte
every half second, clients that pipeline 32 MiB writes, an option that
claims 4 GiB.
At the end one more connection reads the whole export ("nothing lost"), the
server must still be running, and its peak VmRSS must stay under the limit.
"""
import os
import random
import select
import socket
import struct
import sys
import threading
import time

import nbd

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OPT_GO, OPT_LIST, OPT_ABORT = 7, 3, 2
REQUEST_MAGIC = 0x25609513
CMD_READ, CMD_WRITE = 0, 1
REP_ACK = 1
SCRATCH = 32 << 20  # after the good clients' ranges: for the big writers
BIG_PAYLOAD = bytes(range(256)) * (SCRATCH // 256)
MIN_OPS = 5  # each good client does at least this much, however slow the server

lock = threading.Lock()
errors = []
counts = {}


def note(key, n=1):
    with lock:
        counts[key] = counts.get(key, 0) + n


def error(msg):
    with lock:
        errors.append(msg)


# ---- raw protocol pieces for the hostile clients ----

def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed by the server")
        buf += chunk
    return buf


def raw_connect(path, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def raw_handshake(path):
    s = raw_connect(path)
    g = recv_exact(s, 18)
    if g[:8] != NBDMAGIC:
        raise ConnectionError("bad greeting")
    flags = struct.unpack(">H", g[16:18])[0]
    s.sendall(struct.pack(">I", flags & 3))
    return s


def option(opt, payload=b"", length=None):
    return struct.pack(">QII", IHAVEOPT, opt, len(payload) if length is None else length) + payload


def read_option_reply(s):
    magic, opt, typ, length = struct.unpack(">QIII", recv_exact(s, 20))
    recv_exact(s, length)
    return typ


def raw_go(path):
    s = raw_handshake(path)
    s.sendall(option(OPT_GO, struct.pack(">IH", 0, 0)))
    while True:
        typ = read_option_reply(s)
        if typ == REP_ACK:
            return s
        if typ & 0x80000000:
            raise ConnectionError("GO refused")


def request(typ, offset, length, cookie=1, flags=0):
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, typ, cookie, offset, length)


def hostile(kind, path, deadline, scratch):
    rng = random.Random(hash(kind))
    while time.monotonic() < deadline:
        s = None
        try:
            if kind == "garbage":
                s = raw_connect(path, 5)
                s.sendall(rng.randbytes(rng.randint(1, 8192)))
                s.recv(65536)
            elif kind == "garbage-after-go":
                s = raw_go(path)
                s.sendall(rng.randbytes(rng.randint(28, 8192)))
                s.recv(65536)
            elif kind == "stall":
                # Connects and says nothing; the handshake timeout may drop it.
                s = raw_connect(path, 5)
                end = min(deadline, time.monotonic() + 8)
                while time.monotonic() < end:
                    r, _, _ = select.select([s], [], [], 0.5)
                    if r and not s.recv(4096):
                        break
            elif kind == "no-reader":
                # Asks for far more data than the server should ever buffer,
                # never reads a reply, then holds the connection a while.
                s = raw_go(path)
                s.setblocking(False)
                req = b"".join(request(CMD_READ, 0, 1 << 20, cookie=i)
                               for i in range(64))
                sent, stuck_since = 0, None
                while time.monotonic() < deadline and sent < 4096 * 28:
                    try:
                        sent += s.send(req[sent % len(req):])
                        stuck_since = None
                    except BlockingIOError:
                        stuck_since = stuck_since or time.monotonic()
                        if time.monotonic() - stuck_since > 2:
                            break
                        select.select([], [s], [], 0.2)
                note("no-reader requests sent", sent // 28)
                time.sleep(min(3, max(0, deadline - time.monotonic())))
            elif kind == "option-flood":
                s = raw_handshake(path)
                for _ in range(50):  # 50 x 100 unknown options, replies read
                    s.sendall(option(0x7F000000 + rng.randrange(1000)) * 100)
                    for _ in range(100):
                        read_option_reply(s)
                    note("flood options")
                s.sendall(option(OPT_LIST) * 1000 + option(OPT_ABORT))
            elif kind == "mid-payload":
                # Aimed at client 0's range: the cut-off write must never
                # reach the disk, or client 0 notices.
                s = raw_go(path)
                s.sendall(request(CMD_WRITE, 0, 65536) + rng.randbytes(rng.randint(0, 65535)))
            elif kind == "big-writer":
                # Pipelines maximum-size writes and never reads a reply.
                s = raw_go(path)
                for k in range(3):
                    s.sendall(request(CMD_WRITE, scratch, SCRATCH, cookie=k))
                    s.sendall(BIG_PAYLOAD)
                time.sleep(min(2, max(0, deadline - time.monotonic())))
            elif kind == "big-reader":
                # Pipelines maximum-size reads and never reads a reply.
                s = raw_go(path)
                s.setblocking(False)
                reqs = b"".join(request(CMD_READ, 0, SCRATCH, cookie=k) for k in range(64))
                try:
                    s.send(reqs)
                except BlockingIOError:
                    pass
                time.sleep(min(3, max(0, deadline - time.monotonic())))
            elif kind == "trickle":
                # Declares a 32 MiB write to the scratch space and sends its
                # payload a byte every half second.
                s = raw_go(path)
                s.sendall(request(CMD_WRITE, scratch, SCRATCH))
                end = min(deadline, time.monotonic() + 8)
                while time.monotonic() < end:
                    s.sendall(b"\x5a")
                    time.sleep(0.5)
            elif kind == "huge-option":
                s = raw_handshake(path)
                s.sendall(option(OPT_GO, b"\0" * 100, length=0xFFFFFFFF))
                time.sleep(0.2)
            note("hostile " + kind)
        except (OSError, ConnectionError, socket.timeout):
            note("hostile " + kind)  # dropped by the server: fine
        finally:
            if s:
                s.close()
        time.sleep(0.05)


# ---- good clients ----

def connect_good(path):
    # A burst of connections can overflow the listen backlog (EAGAIN on a
    # Unix socket): retry a little, and count it.
    for attempt in range(100):
        h = nbd.NBD()
        try:
            h.connect_unix(path)
            return h
        except nbd.Error as e:
            # libnbd names the errno ("EAGAIN")
            if e.errno not in ("EAGAIN", "ECONNREFUSED") or attempt == 99:
                raise
            note("connect retries")
            time.sleep(0.05 + random.random() * 0.1)
    raise AssertionError("unreachable")


def good(idx, path, slot, deadline, models):
    base = idx * slot
    model = bytearray(slot)
    rng = random.Random(idx)
    ops = 0
    try:
        h = connect_good(path)
        can_zero = h.can_zero()
        while time.monotonic() < deadline or ops < MIN_OPS:
            off = rng.randrange(slot)
            length = rng.randint(1, min(16384, slot - off))
            r = rng.random()
            if r < 0.45:
                data = rng.randbytes(length)
                h.pwrite(data, base + off, nbd.CMD_FLAG_FUA if rng.random() < 0.1 else 0)
                model[off:off + length] = data
            elif r < 0.9:
                got = h.pread(length, base + off)
                if got != model[off:off + length]:
                    error("client %d: read of %d bytes at %d differs from what it wrote" %
                          (idx, length, base + off))
                    return
            elif r < 0.95 and can_zero:
                h.zero(length, base + off)
                model[off:off + length] = bytes(length)
            else:
                h.flush()
            ops += 1
        h.flush()
        if h.pread(slot, base) != model:
            error("client %d: its range differs from what it wrote at the end" % idx)
        h.shutdown()
        models[idx] = model
        note("good ops", ops)
    except nbd.Error as e:
        error("client %d after %d operations: %s" % (idx, ops, e))


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    path, pid = sys.argv[1], int(sys.argv[2])
    nconn, seconds, slot, limit_mb = (int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]),
                                      int(sys.argv[6]))
    scratch = nconn * slot
    t0 = time.monotonic()
    deadline = t0 + seconds
    peak = [0]
    done = threading.Event()

    def monitor():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], rss_kb(pid))
            except OSError:
                error("the server died during the run")
                return
            time.sleep(0.1)

    threading.Thread(target=monitor, daemon=True).start()
    threading.stack_size(256 * 1024)
    kinds = ["garbage", "garbage", "garbage-after-go", "stall", "stall", "stall", "no-reader",
             "no-reader", "big-reader", "big-reader", "option-flood", "mid-payload",
             "trickle", "trickle", "trickle", "huge-option"]
    # Each pipelines 96 MiB of writes: the per-client and --max-inflight
    # caps must keep the server under the RSS limit all the same.
    kinds += ["big-writer"] * int(os.environ.get("LOAD_BIG_WRITERS", "2"))
    hostiles = [threading.Thread(target=hostile, args=(k, path, deadline, scratch))
                for k in kinds]
    for t in hostiles:
        t.start()
    models = [None] * nconn
    goods = [threading.Thread(target=good, args=(i, path, slot, deadline, models))
             for i in range(nconn)]
    for t in goods:
        t.start()
    for t in goods + hostiles:
        t.join(timeout=max(1, deadline - time.monotonic() + 60))
        if t.is_alive():
            error("a client thread hangs (server stopped answering?)")
            break

    if not errors:  # nothing lost: every range, through one more connection
        h = connect_good(path)
        for i, model in enumerate(models):
            if model is not None and h.pread(slot, i * slot) != model:
                error("range of client %d differs in the final read" % i)
        h.shutdown()
    done.set()
    try:
        peak[0] = max(peak[0], rss_kb(pid))
    except OSError:
        error("the server is gone after the run")
    print("%d good connections, %.1f s; server peak VmRSS %d MiB (limit %d)" %
          (nconn, time.monotonic() - t0, peak[0] // 1024, limit_mb))
    for k in sorted(counts):
        print("  %s: %d" % (k, counts[k]))
    if peak[0] > limit_mb * 1024:
        error("server peak VmRSS %d MiB exceeds %d MiB" % (peak[0] // 1024, limit_mb))
    for e in errors[:20]:
        print("FAIL: %s" % e, file=sys.stderr)
    if len(errors) > 20:
        print("... and %d more" % (len(errors) - 20), file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
