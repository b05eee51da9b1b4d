#!/usr/bin/python3
"""Crash rounds for test-free-reuse-crash.sh.

usage: free-reuse-crash.py VHDNBD VHDIMG WORKDIR ROUNDS SEED MODE

A 4 MiB dynamic image of 64 KiB blocks, so that whole-block TRIM and
WRITE_ZEROES free blocks and new blocks take their space again, with a
second to four connections each owning every Nth block (they share BAT and
bitmap sectors, never a sector of data).  Each round starts vhdnbd on a
Unix socket with varied worker, loop and block settings, runs random
writes, write-zeroes (some NO_HOLE) and trims, 30% of them whole blocks,
some with FUA, and flushes, then kills the server at a random moment
(MODE kill: SIGKILL; MODE cut: an injected power cut after a random number
of writes, then SIGKILL).  Then:
  - `vhdimg check` exits 0 or 3;
  - every sector read by the engine (`vhdimg convert`) holds its durable
    state (its last request acknowledged before a completed flush was sent,
    on any connection, or acknowledged with FUA) or the state of a later
    request of the round;
  - QEMU (`qemu-img convert -f vpc`, which ignores sector bitmaps and reads
    a block's data area whole) holds the same, measured from what QEMU read
    after the last round: bytes of a write the crash made undone stay in
    the data area under clear bits, where QEMU reads them and the engine
    reads what was there before.  A freed block's old bytes, or another
    block's, showing through a reused block are caught here.
The image is reused from round to round, so recovered images crash again.
"""
import os
import random
import signal
import subprocess
import sys
import threading
import time

import nbd

VHDNBD, VHDIMG, WORK = sys.argv[1:4]
ROUNDS, SEED, MODE = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
SECTOR = 512
BLOCK = 64 * 1024
SIZE = 4 * 1024 * 1024
BLOCKS = SIZE // BLOCK


class Journal:
    """Requests of a round, in issue order, with the sequence number of
    their reply; flushes raise durable_before to the number they were
    issued at."""

    def __init__(self, rnd):
        self.rnd = rnd
        self.lock = threading.Lock()
        self.ops = []  # [kind, off, length, fua, acked_seq or None]
        self.seq = 0
        self.durable_before = 0
        self.err = None

    def data(self, rid, off, length):
        return random.Random((self.rnd * 1000003 + rid) * 7919 + off).randbytes(length)


def client(sock, seed, conn, nconn, j, dead):
    rng = random.Random(seed * 31 + conn)
    h = nbd.NBD()
    try:
        h.connect_unix(sock)
        mine = [b for b in range(BLOCKS) if b % nconn == conn]
        flush_rate = rng.choice([0.03, 0.1, 0.25])
        while True:
            if rng.random() < flush_rate:
                with j.lock:
                    j.seq += 1
                    issued = j.seq
                h.flush()
                with j.lock:
                    j.durable_before = max(j.durable_before, issued)
                continue
            b = rng.choice(mine)
            if rng.random() < 0.3:
                off, length = b * BLOCK, BLOCK
            else:
                first = rng.randrange(0, BLOCK // SECTOR)
                off = b * BLOCK + first * SECTOR
                length = rng.randint(1, BLOCK // SECTOR - first) * SECTOR
            kind = rng.choices(["w", "z", "t"], [0.6, 0.2, 0.2])[0]
            fua = rng.random() < 0.15
            flags = nbd.CMD_FLAG_FUA if fua else 0
            with j.lock:
                rid = len(j.ops)
                j.ops.append([kind, off, length, fua, None])
            if kind == "w":
                h.pwrite(j.data(rid, off, length), off, flags)
            elif kind == "z":
                h.zero(length, off, flags | (nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.3 else 0))
            else:
                h.trim(length, off, flags)
            with j.lock:
                j.seq += 1
                j.ops[rid][4] = j.seq
    except nbd.Error as e:
        # After the kill, or once the power cut fails the image (EIO).
        if not dead.is_set() and MODE != "cut":
            with j.lock:
                j.err = j.err or "connection %d: %s" % (conn, e)


def bad_sectors(raw, before, j):
    """Sectors of raw in none of the states the round allows."""
    durable = bytearray(before)
    later = {}
    for rid, (kind, off, length, fua, ack) in enumerate(j.ops):
        c = j.data(rid, off, length) if kind == "w" else bytes(length)
        sectors = range(off // SECTOR, (off + length) // SECTOR)
        if ack is not None and (ack < j.durable_before or fua):
            # Durable: a connection's requests to its own blocks are
            # sequential, so issue order is the order they took effect in.
            durable[off:off + length] = c
            for s in sectors:
                later.pop(s, None)
        else:
            for s in sectors:
                later.setdefault(s, []).append(c[s * SECTOR - off:(s + 1) * SECTOR - off])
    bad = []
    for s in range(SIZE // SECTOR):
        got = raw[s * SECTOR:(s + 1) * SECTOR]
        if got != durable[s * SECTOR:(s + 1) * SECTOR] and got not in later.get(s, []):
            bad.append(s)
    return bad


def read_raw(cmd, path):
    if os.path.exists(path):
        os.unlink(path)
    r = subprocess.run(cmd + [path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.exit("%s: %s" % (" ".join(cmd), r.stdout))
    with open(path, "rb") as f:
        return f.read()[:SIZE]


def main():
    os.makedirs(WORK, exist_ok=True)
    img = os.path.join(WORK, "frees.vhd")
    sock = os.path.join(WORK, "sock")
    subprocess.run([VHDIMG, "create", "-t", "dynamic", "--block-size", "64K", "--exact", img,
                    str(SIZE)], check=True, stdout=subprocess.DEVNULL)
    ours = qemus = bytes(SIZE)
    for rnd in range(ROUNDS):
        seed = SEED * 1000 + rnd
        rng = random.Random(seed)
        if os.path.exists(sock):
            os.unlink(sock)
        env = dict(os.environ)
        args = [VHDNBD, "-U", sock, "--threads", str(rng.choice([2, 4, 8]))]
        if MODE == "cut":
            env["VHDNBD_FAULT_AFTER"] = str(rng.randrange(50, 3000))
        if rng.random() < 0.3:
            args.append("--sparse-blocks")
        if rng.random() < 0.3:
            env["VHDNBD_LOOP_WRITES"] = "0"
        if rng.random() < 0.5:
            args += ["--loops", "2"]
        log_path = os.path.join(WORK, "server%d.log" % rnd)
        with open(log_path, "wb") as log:
            p = subprocess.Popen(args + [img], stderr=log, env=env)
        for _ in range(500):
            if os.path.exists(sock) or p.poll() is not None:
                break
            time.sleep(0.02)
        if not os.path.exists(sock):
            sys.exit("round %d: vhdnbd did not start: %s" % (rnd, open(log_path).read()))
        j = Journal(rnd)
        dead = threading.Event()
        nconn = rng.choice([2, 3, 4])
        threads = [threading.Thread(target=client, args=(sock, seed, c, nconn, j, dead))
                   for c in range(nconn)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.3, 1.5))
        dead.set()
        p.send_signal(signal.SIGKILL)
        p.wait()
        for t in threads:
            t.join()
        with open(log_path, errors="replace") as f:
            log = f.read()
        if "Sanitizer" in log or "runtime error" in log:
            sys.exit("round %d: sanitizer report: %s" % (rnd, log))
        if j.err:
            sys.exit("round %d: a request failed before the kill: %s" % (rnd, j.err))
        acked = sum(1 for op in j.ops if op[4] is not None)
        r = subprocess.run([VHDIMG, "check", img], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if r.returncode not in (0, 3):
            sys.exit("round %d: vhdimg check exited %d: %s" % (rnd, r.returncode, r.stdout))
        raw = read_raw([VHDIMG, "convert", "-O", "raw", img], os.path.join(WORK, "ours.raw"))
        bad = bad_sectors(raw, ours, j)
        qraw = read_raw(["qemu-img", "convert", "-f", "vpc", "-O", "raw", img],
                        os.path.join(WORK, "qemu.raw"))
        qbad = bad_sectors(qraw, qemus, j)
        print("round %d (%s, %d connections): %d requests, %d acknowledged; sectors wrong: "
              "vhdimg %d %s, QEMU %d %s" % (rnd, MODE, nconn, len(j.ops), acked, len(bad),
                                            bad[:8], len(qbad), qbad[:8]))
        if bad or qbad:
            sys.exit("round %d: sectors hold no state the requests allow" % rnd)
        if acked < (5 if MODE == "cut" else 20):
            sys.exit("round %d: only %d requests acknowledged: the round tested nothing" %
                     (rnd, acked))
        ours, qemus = raw, qraw


main()
