#!/usr/bin/python3
"""Attack driver for test-attack.sh.

usage: attack.py PORT SERVER_PID LATENCY_LIMIT_S RSS_LIMIT_MB [PHASE...]

The server listens on 127.0.0.1:PORT and serves a default export of at least
256 MiB.  Each phase starts one kind of hostile client from 127.0.0.1 (or
the kind named), lets it settle, and meanwhile a legitimate client from
127.0.0.2 makes LEGIT_REQUESTS requests, each a new connection: handshake,
two 4 KiB READs sent together (real clients pipeline), disconnect.  Every one must be answered within the latency
limit, the server's resident memory (sampled every 50 ms) must stay under
the limit, and the server must stay up.  Phases:

  never-negotiate  200 connections that read the greeting and say nothing,
                   reopened as soon as the server closes them
  spread           the same from 127.0.0.3-127.0.0.9, so that no cap per
                   address stops them
  slow-readers     20 connections that pipeline 64 READs of 32 MiB each and
                   never read a reply
  trickle          100 connections that send a 32 MiB WRITE header, then one
                   payload byte per second each
  all              the first, third and fourth at once, each from its own
                   address (127.0.0.1, .3, .4), so that they add up rather
                   than share one address's connections
"""
import os
import random
import select
import socket
import struct
import sys
import threading
import time

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OPT_GO = 7
REP_ACK = 1
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2
MiB = 1 << 20
EXPORT_SIZE = 256 * MiB
LEGIT_REQUESTS = int(os.environ.get("ATTACK_LEGIT_REQUESTS", "8"))
LEGIT_INTERVAL = 0.25
LEGIT_TIMEOUT = 5.0
SETTLE_MAX = 5.0  # at most this long for an attack to reach its shape


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed by the server")
        buf += chunk
    return buf


def connect(port, src, timeout=5.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s


def go(s):
    """Fixed newstyle negotiation of the default export, simple replies."""
    g = recv_exact(s, 18)
    if g[:8] != NBDMAGIC:
        raise ConnectionError("bad greeting")
    s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, 6) + struct.pack(">IH", 0, 0))
    while True:
        _, _, typ, length = struct.unpack(">QIII", recv_exact(s, 20))
        recv_exact(s, length)
        if typ == REP_ACK:
            return
        if typ & 0x80000000:
            raise ConnectionError("NBD_OPT_GO refused (%#x)" % typ)


def request(typ, offset, length, cookie):
    return struct.pack(">IHHQQI", REQUEST_MAGIC, 0, typ, cookie, offset, length)


class Attack(threading.Thread):
    """A hostile client kind; run() loops until stop is set."""

    def __init__(self, port, stop, source="127.0.0.1"):
        super().__init__(daemon=True)
        self.port, self.stop, self.source = port, stop, source
        self.socks = []
        self.connects = 0
        self.established = 0  # connections in the attack's shape
        self.refused = 0      # connections the server closed on us
        self.error = None

    def ready(self):
        return True

    def run(self):
        try:
            self.attack()
        except Exception as e:  # an attacker crashing is a test bug
            self.error = "%s: %r" % (type(self).__name__, e)
        finally:
            for s in self.socks:
                s.close()


class NeverNegotiate(Attack):
    N = 200

    def __init__(self, port, stop, sources=("127.0.0.1",)):
        super().__init__(port, stop, sources[0])
        self.sources = sources

    def ready(self):
        return self.connects >= self.N

    def attack(self):
        i = 0
        self.connects = 0
        while not self.stop.is_set():
            while len(self.socks) < self.N and not self.stop.is_set():
                try:
                    s = connect(self.port, self.sources[i % len(self.sources)])
                except OSError:
                    time.sleep(0.01)
                    continue
                i += 1
                self.connects = i
                s.setblocking(False)
                self.socks.append(s)
            r, _, _ = select.select(self.socks, [], [], 0.1)
            for s in r:
                try:
                    data = s.recv(4096)  # the greeting, or the server's close
                except OSError:
                    data = b""
                if not data:
                    self.refused += 1
                    self.socks.remove(s)
                    s.close()
            self.established = len(self.socks)


class SlowReaders(Attack):
    N, PIPELINE, LENGTH = 20, 64, 32 * MiB

    def ready(self):
        return self.established >= self.N

    def attack(self):
        rng = random.Random(20)
        pending = {}
        while len(self.socks) < self.N and not self.stop.is_set():
            try:
                s = connect(self.port, self.source)
                go(s)
            except (OSError, ConnectionError):
                self.refused += 1
                time.sleep(0.05)
                continue
            s.setblocking(False)
            self.socks.append(s)
            pending[s] = b"".join(
                request(CMD_READ, rng.randrange(0, EXPORT_SIZE - self.LENGTH, 4096),
                        self.LENGTH, k) for k in range(self.PIPELINE))
        self.established = len(self.socks)
        # Send the requests as far as the server reads them; read nothing.
        while not self.stop.is_set():
            writable = [s for s in self.socks if pending.get(s)]
            if not writable:
                self.stop.wait(0.2)
                continue
            _, w, _ = select.select([], writable, [], 0.2)
            for s in w:
                try:
                    n = s.send(pending[s])
                    pending[s] = pending[s][n:]
                except BlockingIOError:
                    pass
                except OSError:
                    pending[s] = b""


class Trickle(Attack):
    N, LENGTH = 100, 32 * MiB

    def ready(self):
        return self.established >= 20

    def attack(self):
        rng = random.Random(30)
        while not self.stop.is_set():
            while len(self.socks) < self.N and not self.stop.is_set():
                try:
                    s = connect(self.port, self.source, timeout=1.0)
                    go(s)
                    s.sendall(request(CMD_WRITE, rng.randrange(0, EXPORT_SIZE - self.LENGTH,
                                                               4096), self.LENGTH, 1))
                except (OSError, ConnectionError):
                    self.refused += 1
                    break  # the server is full: try again next second
                s.setblocking(False)
                self.socks.append(s)
            self.established = len(self.socks)
            for s in list(self.socks):
                try:
                    s.send(b"\xa5")
                    if s.recv(4096) == b"":
                        raise ConnectionError
                except BlockingIOError:
                    pass
                except (OSError, ConnectionError):
                    self.socks.remove(s)
                    s.close()
            self.stop.wait(1.0)


def legit_request(port, cookie):
    """One connection, two 4 KiB READs in flight together; returns the
    latency of the whole exchange in seconds."""
    t0 = time.monotonic()
    s = connect(port, "127.0.0.2", LEGIT_TIMEOUT)
    try:
        go(s)
        cookies = {2 * cookie, 2 * cookie + 1}
        s.sendall(b"".join(request(CMD_READ, k * 4096 % EXPORT_SIZE, 4096, k)
                           for k in sorted(cookies)))
        while cookies:
            magic, err, c = struct.unpack(">IIQ", recv_exact(s, 16))
            if magic != SIMPLE_REPLY_MAGIC or c not in cookies or err != 0:
                raise ConnectionError("bad reply: magic %#x error %d cookie %d" %
                                      (magic, err, c))
            cookies.remove(c)
            recv_exact(s, 4096)
        latency = time.monotonic() - t0
        s.sendall(request(CMD_DISC, 0, 0, cookie))
        return latency
    finally:
        s.close()


def write_data(port, length):
    """Allocates the start of the export, so that not every READ is a hole."""
    s = connect(port, "127.0.0.2", 30)
    try:
        go(s)
        rng = random.Random(1)
        for k in range(length // MiB):
            s.sendall(request(CMD_WRITE, k * MiB, MiB, k) + rng.randbytes(MiB))
            magic, err, c = struct.unpack(">IIQ", recv_exact(s, 16))
            if magic != SIMPLE_REPLY_MAGIC or err != 0 or c != k:
                raise ConnectionError("WRITE %d failed: error %d" % (k, err))
        s.sendall(request(CMD_DISC, 0, 0, 0))
    finally:
        s.close()


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class RssMonitor(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.alive = pid, 0.0, True
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (OSError, RuntimeError):
                self.alive = False
                return
            self.stop.wait(0.05)


def attacks_for(phase, port, stop):
    spread = tuple("127.0.0.%d" % i for i in range(3, 10))
    return {
        "never-negotiate": lambda: [NeverNegotiate(port, stop)],
        "spread": lambda: [NeverNegotiate(port, stop, spread)],
        "slow-readers": lambda: [SlowReaders(port, stop)],
        "trickle": lambda: [Trickle(port, stop)],
        "all": lambda: [NeverNegotiate(port, stop), SlowReaders(port, stop, "127.0.0.3"),
                        Trickle(port, stop, "127.0.0.4")],
    }[phase]()


def run_phase(phase, port, pid, latency_limit, rss_limit):
    stop = threading.Event()
    attackers = attacks_for(phase, port, stop)
    for a in attackers:
        a.start()
    deadline = time.monotonic() + SETTLE_MAX
    while time.monotonic() < deadline and not all(a.ready() for a in attackers):
        time.sleep(0.05)
    shape = ", ".join("%s %d up/%d closed" % (type(a).__name__, a.established, a.refused)
                      for a in attackers)
    failures = []
    latencies = []
    monitor = RssMonitor(pid)
    monitor.start()
    for k in range(LEGIT_REQUESTS):
        t_next = time.monotonic() + LEGIT_INTERVAL
        try:
            latencies.append(legit_request(port, 1 + k))
        except (OSError, ConnectionError) as e:
            failures.append("request %d: %r" % (k, e))
        time.sleep(max(0.0, t_next - time.monotonic()))
    monitor.stop.set()
    monitor.join()
    stop.set()
    for a in attackers:
        a.join(10)
        if a.error:
            failures.append("attacker failed: " + a.error)
    worst = max(latencies) if latencies else float("nan")
    print("%-16s %d/%d served, worst %.3f s, peak RSS %.0f MiB (attack: %s)" %
          (phase, len(latencies), LEGIT_REQUESTS, worst, monitor.peak, shape))
    if not monitor.alive:
        failures.append("the server died")
    if not all(a.ready() for a in attackers):
        failures.append("the attack never reached its shape: " + shape)
    slow = [t for t in latencies if t > latency_limit]
    if slow:
        failures.append("%d requests slower than %.1f s (worst %.3f s)" %
                        (len(slow), latency_limit, worst))
    if monitor.peak > rss_limit:
        failures.append("peak RSS %.0f MiB over %d MiB" % (monitor.peak, rss_limit))
    return ["%s: %s" % (phase, f) for f in failures]


def main():
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    latency_limit, rss_limit = float(sys.argv[3]), int(sys.argv[4])
    phases = sys.argv[5:] or ["never-negotiate", "spread", "slow-readers", "trickle", "all"]
    write_data(port, 64 * MiB)
    failures = []
    for phase in phases:
        failures += run_phase(phase, port, pid, latency_limit, rss_limit)
    for f in failures:
        print("FAIL: " + f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
