#!/usr/bin/python3
"""Times a server from exec until it greets a client on its Unix socket.

Usage: startup-time.py --socket SOCK [--runs N] -- COMMAND [ARGS...]

Starts COMMAND (which must listen on SOCK), polls SOCK every millisecond
until a connection receives the 8-byte NBDMAGIC greeting, then stops the
server with SIGTERM.  Repeats N times and prints

    startup_ms min=M median=M max=M runs=N

This covers everything a user waits for: exec, option parsing, opening the
image (for a VHD: footer, header, BAT) and binding the socket.
"""

import argparse
import os
import socket
import subprocess
import sys
import time

POLL = 0.001
LIMIT = 10.0
NBDMAGIC = b"NBDMAGIC"


def greeted(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        got = b""
        while len(got) < len(NBDMAGIC):
            chunk = s.recv(len(NBDMAGIC) - len(got))
            if not chunk:
                return False
            got += chunk
        return got == NBDMAGIC
    except OSError:
        return False
    finally:
        s.close()


def one_run(path, cmd):
    if os.path.exists(path):
        os.unlink(path)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        while time.monotonic() - t0 < LIMIT:
            if proc.poll() is not None:
                raise RuntimeError("%s exited with status %d before listening"
                                   % (cmd[0], proc.returncode))
            if greeted(path):
                return (time.monotonic() - t0) * 1e3
            time.sleep(POLL)
        raise RuntimeError("%s did not greet on %s within %.0f s" % (cmd[0], path, LIMIT))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=LIMIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd or not 1 <= args.runs <= 100:
        ap.error("need a command after --, and --runs 1..100")
    try:
        ms = sorted(one_run(args.socket, cmd) for _ in range(args.runs))
    except RuntimeError as e:
        print("startup-time: %s" % e, file=sys.stderr)
        return 1
    print("startup_ms min=%.1f median=%.1f max=%.1f runs=%d"
          % (ms[0], ms[len(ms) // 2], ms[-1], len(ms)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
