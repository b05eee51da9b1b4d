#!/usr/bin/python3
"""Crash rounds for test-kill9-crash.sh.

usage: kill9-crash.py VHDNBD VHDIMG WORKDIR ROUNDS SEED

For each image (dynamic, fixed, differencing over a parent full of data), ROUNDS
times: start vhdnbd on a Unix socket, run random writes and write-zeroes
(some with FUA, some unaligned, sub-sector included) and flushes on one to three connections
(each writing its own interleaved 64 KiB chunks), wait until at least
MIN_ACKED writes are acknowledged, SIGKILL the server at a random moment after
that, then require
  - the server to have died of that SIGKILL (its wait status), not earlier of
    anything else, with no sanitizer report on its stderr;
  - no client error before the kill (every request before it succeeded);
  - `vhdimg check` to exit 0 (clean) or 3 (leaks only);
  - the disk (`vhdimg convert -O raw`) to hold every write acknowledged
    before a completed flush was sent, on any connection (multi-conn), and
    every acknowledged FUA write;
  - each 512-byte sector touched by later writes to hold one of the states
    the write sequence passed through (a write can tear at sector
    granularity; a sub-sector write is read-modify-write of its sector);
  - readers other than our engine to agree: QEMU (`qemu-img info` and
    `convert -f vpc`) must read a fixed image as above, sector for sector,
    and, as it ignores sector bitmaps, a dynamic one wherever the last
    durable write of this round was data; libvhdi (pyvhdi, with the parent
    for the differencing image) must read every durable sector of the round
    as the journal says.
The image is reused from round to round, so recovered images crash again;
every other round with leaks is repaired first (`check --repair` must reclaim
an unused tail that holds nothing, and must not change the disk's content; a
tail holding data, blocks allocated just before the kill, stays: nothing
shows it is the engine's).
"""
import os
import random
import signal
import subprocess
import sys
import threading
import time

import nbd
import pyvhdi

SECTOR = 512
SIZE = 8 * 1024 * 1024
# Acknowledged writes a round needs before the kill may come: enough that a
# server failing after some dozens of requests cannot slip through a round.
MIN_ACKED = 100
MIN_ACKED_WITHIN = 60  # seconds
# What AddressSanitizer, LeakSanitizer and UBSan print when they report.
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "SUMMARY: AddressSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")


class Failure(Exception):
    pass


ZEROES = set()  # ids of write-zeroes requests: their "payload" is zeros


def payload(seed, wid, length):
    if (seed, wid) in ZEROES:
        return bytes(length)
    return random.Random(seed * 1000003 + wid).randbytes(length)


class Server:
    def __init__(self, vhdnbd, sock, pidfile, image, log):
        for p in (sock, pidfile):
            if os.path.exists(p):
                os.unlink(p)
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen([vhdnbd, "-U", sock, "--pidfile", pidfile, image],
                                         stderr=err)
        for _ in range(200):  # at most ~10 s
            if os.path.exists(pidfile) and os.path.getsize(pidfile) > 0:
                return
            if self.proc.poll() is not None:
                raise Failure("vhdnbd exited (%d) before listening on %s" %
                              (self.proc.returncode, image))
            time.sleep(0.05)
        self.kill()
        raise Failure("vhdnbd did not write its pidfile within 10 s")

    def kill(self, sig=signal.SIGKILL):
        """Sends sig unless the server is gone already; returns its wait
        status as Popen has it (-N: killed by signal N)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def stderr(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def check_death(self, status, sig):
        """The server must have ended by sig (sent by us), and said nothing a
        sanitizer says."""
        text = self.stderr()
        if status != -sig:
            how = ("killed by signal %d" % -status if status < 0 else
                   "exited with status %d" % status)
            raise Failure("vhdnbd %s, expected death by signal %d from the test; its "
                          "stderr:\n%s" % (how, sig, text))
        if any(m in text for m in SANITIZER_MARKS):
            raise Failure("sanitizer report on vhdnbd's stderr:\n%s" % text)


def run(cmd, ok=(0,)):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=60)
    if r.returncode not in ok:
        raise Failure("%s: exit %d\n%s" % (" ".join(cmd), r.returncode, r.stdout))
    return r


CHUNK = 64 * 1024  # connections write to disjoint interleaved chunks


class Journal:
    """What the clients know, in one order across connections: writes sent
    (off, len, fua), when each was acknowledged (a global sequence number),
    and the latest sequence number a completed flush covers: a flush makes
    durable every write acknowledged before it was sent, on any connection
    (the server advertises multi-conn)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.writes = []  # [off, len, fua, ack_seq or None]
        self.seq = 0
        self.durable_before = 0
        self.nacked = 0
        self.error = None
        self.changed = threading.Condition(self.lock)

    def sent_locked(self, off, length, fua):
        self.writes.append([off, length, fua, None])
        return len(self.writes) - 1

    def acked(self, wid):
        with self.lock:
            self.seq += 1
            self.writes[wid][3] = self.seq
            self.nacked += 1
            self.changed.notify_all()

    def failed(self, error):
        with self.lock:
            if self.error is None:
                self.error = error
            self.changed.notify_all()

    def wait_acked(self, n, server, timeout):
        """Waits until n writes are acknowledged, a client fails, the server
        dies or timeout seconds pass; returns the number acknowledged."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while (self.nacked < n and self.error is None and server.proc.poll() is None and
                   time.monotonic() < deadline):
                self.changed.wait(0.1)
            return self.nacked

    def flush_sent(self):
        with self.lock:
            self.seq += 1
            return self.seq

    def flush_done(self, issued):
        with self.lock:
            self.durable_before = max(self.durable_before, issued)


def workload(sock, seed, conn, nconn, journal, killed, stop_at):
    rng = random.Random(seed * 31 + conn)
    h = nbd.NBD()
    try:
        h.connect_unix(sock)
        if h.get_size() != SIZE:
            raise Failure("export is %d bytes, expected %d" % (h.get_size(), SIZE))
        # Some rounds flush often, some rarely (many writes in doubt).
        flush_rate = rng.choice([0.02, 0.05, 0.1, 0.2])
        mine = [c for c in range(SIZE // CHUNK) if c % nconn == conn]
        while time.monotonic() < stop_at:
            if rng.random() < flush_rate:
                issued = journal.flush_sent()
                h.flush()
                journal.flush_done(issued)
                continue
            base = rng.choice(mine) * CHUNK
            if rng.random() < 0.7:
                off = base + rng.randrange(0, CHUNK // SECTOR) * SECTOR
                length = rng.randint(1, 64) * SECTOR
            else:
                off = base + rng.randrange(0, CHUNK - 1)
                length = rng.randint(1, 9000)
            length = min(length, base + CHUNK - off)
            fua = rng.random() < 0.15
            flags = nbd.CMD_FLAG_FUA if fua else 0
            zero = rng.random() < 0.15
            with journal.lock:  # registered before anyone computes a payload
                wid = journal.sent_locked(off, length, fua)
                if zero:
                    ZEROES.add((seed, wid))
            if zero:
                # Without NO_HOLE the server may deallocate (bitmap bits,
                # whole blocks): metadata changes that must be crash-safe too.
                if rng.random() < 0.3:
                    flags |= nbd.CMD_FLAG_NO_HOLE
                h.zero(length, off, flags)
            else:
                h.pwrite(payload(seed, wid, length), off, flags)
            journal.acked(wid)
    except nbd.Error as e:
        # Expected once the server is killed, and only then.
        if not killed.is_set():
            journal.failed(Failure("connection %d: %s, before the server was killed" %
                                   (conn, e)))
    except Exception as e:  # reported by the main thread
        journal.failed(e)


def verify(raw, baseline, journal, seed):
    """Checks raw against the journal; returns the number of writes in doubt
    and what the round made durable: the expected disk and, for each sector
    written durably this round and not touched since, whether its last
    write was data (True) or zeroes."""
    if len(raw) != len(baseline):
        raise Failure("disk is %d bytes, %d before" % (len(raw), len(baseline)))
    expect = bytearray(baseline)
    later = []
    durable = {}
    # A sector is only written by one connection, one write at a time, so
    # its writes in journal order are the order they reached the disk; a
    # durable write never follows a doubtful one on the same sector.
    for wid, (off, length, fua, ack) in enumerate(journal.writes):
        if ack is not None and ack < journal.durable_before:
            expect[off:off + length] = payload(seed, wid, length)
            for sec in range(off // SECTOR, (off + length - 1) // SECTOR + 1):
                durable[sec] = (seed, wid) not in ZEROES
        else:
            later.append(wid)
    touched = {}
    for wid in later:
        off, length = journal.writes[wid][0], journal.writes[wid][1]
        for s in range(off // SECTOR, (off + length - 1) // SECTOR + 1):
            touched.setdefault(s, []).append(wid)
    nsec = len(raw) // SECTOR
    s = 0
    while s < nsec:  # runs of untouched sectors: exactly the durable content
        if s in touched:
            s += 1
            continue
        e = s
        while e < nsec and e not in touched:
            e += 1
        a, b = s * SECTOR, e * SECTOR
        if raw[a:b] != expect[a:b]:
            bad = next(i for i in range(a, b) if raw[i] != expect[i])
            raise Failure("byte %d (sector %d, not written since the last completed flush) "
                          "is 0x%02x, expected 0x%02x" % (bad, bad // SECTOR, raw[bad],
                                                           expect[bad]))
        s = e
    for sec, wids in touched.items():
        a = sec * SECTOR
        state = bytearray(expect[a:a + SECTOR])
        states = [bytes(state)]
        floor = 0
        for i, wid in enumerate(wids):
            off, length, fua, ack = journal.writes[wid]
            lo, hi = max(off, a), min(off + length, a + SECTOR)
            state[lo - a:hi - a] = payload(seed, wid, length)[lo - off:hi - off]
            states.append(bytes(state))
            if fua and ack is not None:
                floor = i + 1
        if raw[a:a + SECTOR] not in states[floor:]:
            raise Failure("sector %d holds none of the states its writes %s passed through "
                          "(an acknowledged FUA write makes state %d the oldest allowed)" %
                          (sec, wids, floor))
    for sec in touched:
        durable.pop(sec, None)
    return len(later), expect, durable


def compare_sectors(reader, read, sectors, expect):
    """read(sector) -> 512 bytes must equal expect at each of sectors."""
    for sec in sorted(sectors):
        a = sec * SECTOR
        got = read(sec)
        if got != expect[a:a + SECTOR]:
            bad = next(i for i in range(SECTOR) if got[i] != expect[a + i])
            raise Failure("%s reads byte %d (sector %d, written and flushed this round) as "
                          "0x%02x, expected 0x%02x" % (reader, a + bad, sec, got[bad],
                                                       expect[a + bad]))


def check_qemu(image, kind, raw_path, baseline, journal, seed, expect, durable):
    """QEMU's vpc driver, an independent reader of fixed and dynamic images
    (it cannot open differencing ones)."""
    run(["qemu-img", "info", "-f", "vpc", image])
    if os.path.exists(raw_path):
        os.unlink(raw_path)
    run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", image, raw_path])
    with open(raw_path, "rb") as f:
        qraw = f.read()
    if kind == "fixed":
        try:
            verify(qraw, baseline, journal, seed)
        except Failure as e:
            raise Failure("as QEMU reads it: %s" % e)
        return
    if len(qraw) != len(expect):
        raise Failure("QEMU reads a disk of %d bytes, expected %d" % (len(qraw), len(expect)))
    # QEMU ignores the sector bitmaps: where zeroes only cleared bits it
    # reads the stale data behind them, so only data sectors are its to judge.
    compare_sectors("QEMU", lambda sec: qraw[sec * SECTOR:(sec + 1) * SECTOR],
                    [sec for sec, data in durable.items() if data], expect)


def check_libvhdi(image, parent, expect, durable):
    """libvhdi, the reference reader, a sector at a time, on the sectors
    written with data this round.  (Debian 12's libvhdi misreads
    clear bits that follow a set one in a bitmap byte of a differencing
    image, taking them from the child instead of the parent; sectors written
    this round all have their bits set, so the misread cannot touch them.)"""
    files = []
    try:
        for path in [image] + ([parent] if parent else []):
            f = pyvhdi.file()
            f.open(path)
            files.append(f)
        if parent:
            files[0].set_parent(files[1])
        top = files[0]
        if top.get_media_size() != len(expect):
            raise Failure("libvhdi sees a disk of %d bytes, expected %d" %
                          (top.get_media_size(), len(expect)))
        # Only sectors whose last durable write was data: Debian 12's
        # libvhdi also misreads a clear bit that follows a set one in a
        # bitmap byte of a dynamic image (seen: byte 0xe0, sector 4 of it
        # zeroed and flushed, bit clear on disk, libvhdi read the old data),
        # so zeroes are judged by vhdimg's read in verify() alone.
        sectors = [sec for sec, data in durable.items() if data]
        compare_sectors("libvhdi", lambda sec: top.read_buffer_at_offset(SECTOR, sec * SECTOR),
                        sectors, expect)
        return len(sectors)
    finally:
        for f in files:
            f.close()


def read_raw(vhdimg, image, out):
    if os.path.exists(out):
        os.unlink(out)
    run([vhdimg, "convert", "-O", "raw", image, out])
    with open(out, "rb") as f:
        return f.read()


def rounds(args, image, kind, rng, stats, parent=None):
    vhdnbd, vhdimg, work, nrounds = args
    sock = os.path.join(work, "nbd.sock")
    pidfile = os.path.join(work, "vhdnbd.pid")
    raw_path = os.path.join(work, "disk.raw")
    qemu_path = os.path.join(work, "qemu.raw")
    name = os.path.basename(image)
    baseline = read_raw(vhdimg, image, raw_path)
    for rnd in range(1, nrounds + 1):
        seed = rng.randrange(1 << 30)
        where = "%s round %d (seed %d)" % (name, rnd, seed)
        journal = Journal()
        killed = threading.Event()
        nconn = rng.choice([1, 1, 2, 3])
        where += " with %d connection%s" % (nconn, "s" if nconn > 1 else "")
        server = Server(vhdnbd, sock, pidfile, image, os.path.join(work, "vhdnbd.stderr"))
        workers = []
        try:
            for conn in range(nconn):
                # The clients write until the kill; the deadline only bounds
                # them should the main thread fail.
                workers.append(threading.Thread(target=workload, args=(
                    sock, seed, conn, nconn, journal, killed,
                    time.monotonic() + MIN_ACKED_WITHIN + 30)))
                workers[-1].start()
            nacked = journal.wait_acked(MIN_ACKED, server, MIN_ACKED_WITHIN)
            if nacked >= MIN_ACKED:
                time.sleep(rng.random() * 0.5)
        finally:
            killed.set()
            status = server.kill()
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                raise Failure("%s: a client hangs after the server was killed" % where)
        try:
            server.check_death(status, signal.SIGKILL)
        except Failure as e:
            raise Failure("%s: %s" % (where, e))
        if journal.error:
            raise Failure("%s: the client failed: %s" % (where, journal.error))
        nacked = journal.nacked
        if nacked < MIN_ACKED:
            raise Failure("%s: only %d writes acknowledged within %d s, a round needs %d" %
                          (where, nacked, MIN_ACKED_WITHIN, MIN_ACKED))
        try:
            r = run([vhdimg, "check", image], ok=(0, 3))
            raw = read_raw(vhdimg, image, raw_path)
            doubtful, expect, durable = verify(raw, baseline, journal, seed)
            if kind != "differencing":
                check_qemu(image, kind, qemu_path, baseline, journal, seed, expect, durable)
            by_libvhdi = check_libvhdi(image, parent, expect, durable)
            if r.returncode == 3 and rnd % 2 == 0:
                repair(vhdimg, image, raw, work)
        except Failure as e:
            keep = os.path.join(os.environ.get("top_builddir", "."), "kill9-" + name)
            subprocess.run(["cp", image, keep])
            raise Failure("%s: %s\n(image kept as %s)" % (where, e, keep))
        print("%s: %d writes, %d acknowledged, %d after the last flush, check exit %d, "
              "%d sectors read back by libvhdi" %
              (where, len(journal.writes), nacked, doubtful, r.returncode, by_libvhdi))
        stats[0] += 1
        stats[1] += len(journal.writes)
        stats[2] = nacked if stats[2] is None else min(stats[2], nacked)
        baseline = raw


def repair(vhdimg, image, raw, work):
    r = run([vhdimg, "check", "--repair", image], ok=(0, 3))
    after = run([vhdimg, "check", image], ok=(0, 3))
    reclaimable = [line for line in after.stdout.splitlines()
                   if "before the trailing footer" in line and "hold data" not in line]
    if after.returncode != r.returncode or reclaimable:
        raise Failure("check --repair exit %d, then check exit %d:\n%s%s" %
                      (r.returncode, after.returncode, r.stdout, after.stdout))
    if read_raw(vhdimg, image, os.path.join(work, "repaired.raw")) != raw:
        raise Failure("check --repair changed the disk's content")


def fill_parent(vhdnbd, vhdimg, work, parent):
    run([vhdimg, "create", "-t", "dynamic", "--block-size", "64K", "--exact", parent,
         str(SIZE)])
    server = Server(vhdnbd, os.path.join(work, "nbd.sock"), os.path.join(work, "vhdnbd.pid"),
                    parent, os.path.join(work, "vhdnbd.stderr"))
    try:
        h = nbd.NBD()
        h.connect_unix(os.path.join(work, "nbd.sock"))
        rng = random.Random(1)
        for off in range(0, SIZE, 1 << 20):
            h.pwrite(rng.randbytes(1 << 20), off)
        h.flush()
        h.shutdown()
    finally:
        status = server.kill(signal.SIGTERM)
    if status != 0 or any(m in server.stderr() for m in SANITIZER_MARKS):
        raise Failure("vhdnbd serving the parent exited with status %d on SIGTERM:\n%s" %
                      (status, server.stderr()))


def main():
    vhdnbd, vhdimg, work = sys.argv[1:4]
    nrounds, seed = int(sys.argv[4]), int(sys.argv[5])
    rng = random.Random(seed)
    args = (vhdnbd, vhdimg, work, nrounds)
    stats = [0, 0, None]
    t0 = time.monotonic()
    try:
        dyn = os.path.join(work, "dynamic.vhd")
        run([vhdimg, "create", "-t", "dynamic", "--block-size", "64K", "--exact", dyn,
             str(SIZE)])
        rounds(args, dyn, "dynamic", rng, stats)
        fixed = os.path.join(work, "fixed.vhd")
        run([vhdimg, "create", "-t", "fixed", "--exact", fixed, str(SIZE)])
        rounds(args, fixed, "fixed", rng, stats)
        # New writes must hide the parent's data, lost ones let it show.
        parent = os.path.join(work, "parent.vhd")
        fill_parent(vhdnbd, vhdimg, work, parent)
        child = os.path.join(work, "child.vhd")
        run([vhdimg, "create", "-t", "differencing", "-b", parent, child])
        rounds(args, child, "differencing", rng, stats, parent)
        run([vhdimg, "check", parent])  # never written through its child
    except Failure as e:
        print("FAIL: %s" % e, file=sys.stderr)
        return 1
    print("%d rounds, %d writes, at least %d acknowledged in each round, %.1f s" %
          (stats[0], stats[1], stats[2], time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
