#!/usr/bin/python3
"""Keeps COUNT NBD connections busy and reports the server's memory.

Usage: nbd-active.py --socket SOCK --pid PID --size BYTES [--count N]
                     [--inflight D] [--duration S] [--settle S]

Reads VmRSS of PID with no client connected, then opens COUNT connections
(fixed newstyle, NBD_OPT_GO, as bench/nbd-idle.py does) and keeps D 4 KiB
READs at random offsets below BYTES outstanding on each: every reply is
answered with a new request.  After SETTLE seconds of that it samples VmRSS
every 0.1 s for DURATION seconds (longer, up to the larger of 10 s and ten
times DURATION, until every connection has had a reply), then reads VmHWM,
drains the replies and disconnects.  It prints

    rss_idle_kib=I rss_kib=R hwm_kib=H connections=N inflight=D requests=Q min_per_conn=M

where R is the largest VmRSS sampled, Q the replies received while sampling
and M the fewest any one connection received then (0 would mean a
connection stood idle, so the figure would not be of active connections).
One thread and epoll drive every connection, so the client side stays small.
"""

import argparse
import importlib.util
import os
import random
import resource
import select
import struct
import sys
import time

REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
CMD_READ = 0
CMD_DISC = 2
BLOCK = 4096
REPLY_HEADER = 16
DRAIN_TIMEOUT = 10.0
EXTEND_MAX = 10.0  # seconds DURATION may stretch to until every connection had a reply


def load_idle_module():
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("nbd_idle", os.path.join(here, "nbd-idle.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def proc_status_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s for pid %d" % (field, pid))


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.outstanding = 0
        self.done = 0


class Driver:
    def __init__(self, size, rng):
        self.blocks = size // BLOCK
        self.rng = rng
        self.cookie = 0
        self.issuing = True

    def send_read(self, c):
        self.cookie += 1
        off = self.rng.randrange(self.blocks) * BLOCK
        req = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, self.cookie, off, BLOCK)
        # 28 bytes into a socket whose send buffer holds at most a few
        # requests: a short send would mean the server stopped reading.
        if c.sock.send(req) != len(req):
            raise ConnectionError("short send of a request")
        c.outstanding += 1

    def on_readable(self, c):
        data = c.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("server closed a connection with %d requests outstanding"
                                  % c.outstanding)
        c.buf += data
        while len(c.buf) >= REPLY_HEADER:
            magic, err, _cookie = struct.unpack_from(">IIQ", c.buf)
            if magic != SIMPLE_REPLY_MAGIC:
                raise ConnectionError("bad reply magic %#x" % magic)
            if err:
                raise ConnectionError("READ failed with NBD error %d" % err)
            if len(c.buf) < REPLY_HEADER + BLOCK:
                break
            del c.buf[:REPLY_HEADER + BLOCK]
            c.outstanding -= 1
            c.done += 1
            if self.issuing:
                self.send_read(c)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--size", type=int, required=True, help="export size in bytes")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--inflight", type=int, default=4)
    ap.add_argument("--export", default="")
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=2.0)
    args = ap.parse_args()
    if not 1 <= args.count <= 10000:
        ap.error("--count must be 1..10000")
    if not 1 <= args.inflight <= 64:
        ap.error("--inflight must be 1..64")
    if args.size < BLOCK:
        ap.error("--size must be at least %d" % BLOCK)

    # Each connection is one descriptor here and one in the server.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.count + 64:
        want = args.count + 64 if hard == resource.RLIM_INFINITY else min(hard, args.count + 64)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        if want < args.count + 64:
            print("nbd-active: RLIMIT_NOFILE hard limit %d is too low for %d connections"
                  % (hard, args.count), file=sys.stderr)
            return 1

    idle = load_idle_module()
    rss_idle = proc_status_kib(args.pid, "VmRSS")
    drv = Driver(args.size, random.Random(1))
    conns = {}
    ep = select.epoll()
    try:
        for i in range(args.count):
            try:
                s = idle.handshake(args.socket, args.export)
            except (OSError, ConnectionError) as e:
                print("nbd-active: connection %d of %d: %s" % (i + 1, args.count, e),
                      file=sys.stderr)
                return 1
            s.setblocking(False)
            conns[s.fileno()] = Conn(s)
            ep.register(s.fileno(), select.EPOLLIN)
        for c in conns.values():
            for _ in range(args.inflight):
                drv.send_read(c)

        def pump(until, sample=None):
            next_sample = time.monotonic()
            while True:
                now = time.monotonic()
                if now >= until:
                    return
                if sample is not None and now >= next_sample:
                    sample()
                    next_sample = now + 0.1
                for fd, _ev in ep.poll(min(0.1, until - now)):
                    drv.on_readable(conns[fd])

        pump(time.monotonic() + args.settle)
        base = {fd: c.done for fd, c in conns.items()}
        rss = [0]

        def sample():
            rss[0] = max(rss[0], proc_status_kib(args.pid, "VmRSS"))

        start = time.monotonic()
        pump(start + args.duration, sample)
        # A loaded machine (or a sanitizer build) may not have answered every
        # connection within a short DURATION: sampling goes on, a bounded
        # while, until each has had a reply, so that the figure is one of
        # connections that were all active.
        limit = start + max(EXTEND_MAX, 10 * args.duration)
        while (any(c.done == base[fd] for fd, c in conns.items()) and
               time.monotonic() < limit):
            pump(time.monotonic() + 0.1, sample)
        sample()
        hwm = proc_status_kib(args.pid, "VmHWM")
        per_conn = [c.done - base[fd] for fd, c in conns.items()]

        drv.issuing = False
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while any(c.outstanding for c in conns.values()):
            if time.monotonic() >= deadline:
                print("nbd-active: replies still outstanding after %g s" % DRAIN_TIMEOUT,
                      file=sys.stderr)
                return 1
            for fd, _ev in ep.poll(0.1):
                drv.on_readable(conns[fd])
        for c in conns.values():
            c.sock.setblocking(True)
            c.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))

        print("rss_idle_kib=%d rss_kib=%d hwm_kib=%d connections=%d inflight=%d requests=%d "
              "min_per_conn=%d" % (rss_idle, rss[0], hwm, len(conns), args.inflight,
                                   sum(per_conn), min(per_conn)))
        return 0
    except (OSError, ConnectionError) as e:
        print("nbd-active: %s" % e, file=sys.stderr)
        return 1
    finally:
        ep.close()
        for c in conns.values():
            c.sock.close()


if __name__ == "__main__":
    sys.exit(main())
