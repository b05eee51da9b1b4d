#!/usr/bin/python3
"""Opens COUNT idle NBD connections to a server and reports its memory.

Usage: nbd-idle.py --socket SOCK --pid PID --count N [--export NAME]

Each connection completes the fixed-newstyle handshake with NBD_OPT_GO (so the
server has set it up for transmission) and then sends nothing.  With all of
them open the script waits briefly, reads VmRSS of PID from /proc, prints

    rss_kib=R connections=N

and closes them.  Raw sockets keep the client side small and independent of
libnbd, so 500 connections cost the benchmark itself almost nothing.
"""

import argparse
import socket
import struct
import sys
import time

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x0003E889045565A9
FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
OPT_GO = 7
REP_ACK = 1
REP_ERR_BIT = 1 << 31
TIMEOUT = 10.0
MAX_REPLIES = 64


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection during the handshake")
        buf += chunk
    return buf


def handshake(path, export):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect(path)
    magic, opt_magic, hflags = struct.unpack(">QQH", recv_exact(s, 18))
    if magic != NBDMAGIC or opt_magic != IHAVEOPT:
        raise ConnectionError("not a newstyle NBD server (magic %#x %#x)" % (magic, opt_magic))
    if not hflags & FLAG_FIXED_NEWSTYLE:
        raise ConnectionError("server does not offer fixed newstyle")
    cflags = FLAG_FIXED_NEWSTYLE | (hflags & FLAG_NO_ZEROES)
    name = export.encode()
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(struct.pack(">IQII", cflags, IHAVEOPT, OPT_GO, len(data)) + data)
    for _ in range(MAX_REPLIES):
        rmagic, opt, rtype, rlen = struct.unpack(">QIII", recv_exact(s, 20))
        if rmagic != REPLY_MAGIC or opt != OPT_GO:
            raise ConnectionError("bad option reply (magic %#x, option %d)" % (rmagic, opt))
        payload = recv_exact(s, rlen)
        if rtype & REP_ERR_BIT:
            raise ConnectionError("NBD_OPT_GO refused: reply %#x %r" % (rtype, payload[:80]))
        if rtype == REP_ACK:
            return s
    raise ConnectionError("no NBD_REP_ACK after %d replies" % MAX_REPLIES)


def vmrss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--export", default="")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds to wait with all connections open")
    args = ap.parse_args()
    if not 1 <= args.count <= 10000:
        ap.error("--count must be 1..10000")

    conns = []
    try:
        for i in range(args.count):
            try:
                conns.append(handshake(args.socket, args.export))
            except (OSError, ConnectionError) as e:
                print("nbd-idle: connection %d of %d: %s" % (i + 1, args.count, e),
                      file=sys.stderr)
                return 1
        time.sleep(args.settle)
        print("rss_kib=%d connections=%d" % (vmrss_kib(args.pid), len(conns)))
        return 0
    finally:
        for s in conns:
            s.close()


if __name__ == "__main__":
    sys.exit(main())
