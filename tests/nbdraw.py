"""nbdraw: a raw NBD client for the shell tests that need what libnbd does
not show or will not send: option reply types, refusals, malformed options,
NBD_OPT_EXPORT_NAME.  Import it from an inline script run by $PY3; the
test's functions.sh puts this directory on PYTHONPATH."""
import fcntl
import select
import socket
import struct
import termios
import time

OPT_MAGIC = 0x49484156454F5054  # "IHAVEOPT"
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 6, 7, 8
OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 9, 10
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_POLICY, REP_ERR_TLS_REQD = 0x80000002, 0x80000005
FLAGS_FIXED_NEWSTYLE_NO_ZEROES = 3


class Closed(EOFError):
    """The server closed the connection in the middle of a message."""


class Raw:
    def __init__(self, sock):
        self.s = sock

    @classmethod
    def tcp(cls, host, port, timeout=30):
        s = socket.create_connection((host, int(port)), timeout)
        s.settimeout(timeout)
        return cls(s)

    @classmethod
    def unix(cls, path, timeout=30):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        s.connect(path)
        return cls(s)

    def recv(self, n):
        """Exactly n bytes, or Closed."""
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise Closed("server closed the connection after %d of %d bytes" % (len(b), n))
            b += c
        return b

    def send(self, data):
        self.s.sendall(data)

    def wait_read(self, seconds=20):
        """Waits until the server has read all that was sent (a Unix
        socket's send queue counts bytes until the peer reads them); a
        test that acts on the server's state of a request needs it to have
        seen the request, not only the kernel."""
        assert self.s.family == socket.AF_UNIX, "wait_read needs a Unix socket"
        deadline = time.monotonic() + seconds
        while True:
            left = struct.unpack("i", fcntl.ioctl(self.s.fileno(), termios.TIOCOUTQ,
                                                  b"\0" * 4))[0]
            if left == 0:
                return
            assert time.monotonic() < deadline, \
                "the server left %d bytes unread for %d s" % (left, seconds)
            time.sleep(0.01)

    def newstyle(self, flags=FLAGS_FIXED_NEWSTYLE_NO_ZEROES):
        """Reads the greeting, checks it is fixed newstyle, answers with the
        client flags; returns the server's handshake flags."""
        magic, ihave, hflags = struct.unpack(">QQH", self.recv(18))
        assert ihave == OPT_MAGIC, "greeting: %#x is not IHAVEOPT" % ihave
        self.send(struct.pack(">I", flags))
        return hflags

    def send_option(self, opt, data=b""):
        self.send(struct.pack(">QII", OPT_MAGIC, opt, len(data)) + data)

    def reply(self):
        """One option reply: (option, type, payload)."""
        _, opt, typ, ln = struct.unpack(">QIII", self.recv(20))
        return opt, typ, self.recv(ln)

    def option(self, opt, data=b""):
        """Sends an option and returns its first reply as (type, payload)."""
        self.send_option(opt, data)
        _, typ, payload = self.reply()
        return typ, payload

    def go(self, name=""):
        """NBD_OPT_GO for the export name: skips the NBD_REP_INFO replies and
        requires the ACK that starts transmission."""
        typ, _ = self.option(OPT_GO, name_data(name))
        while typ == REP_INFO:
            _, typ, _ = self.reply()
        assert typ == REP_ACK, "GO refused: %#x" % typ

    def starttls(self, ctx):
        """NBD_OPT_STARTTLS, then a TLS session over the same socket."""
        typ, _ = self.option(OPT_STARTTLS)
        assert typ == REP_ACK, "STARTTLS refused: %#x" % typ
        self.s = ctx.wrap_socket(self.s)

    def close(self):
        self.s.close()


def name_data(name, infos=b"\0\0"):
    """INFO/GO data: the export name, then the information request list
    (by default none)."""
    if isinstance(name, str):
        name = name.encode()
    return struct.pack(">I", len(name)) + name + infos


def meta_data(name, *queries):
    """LIST/SET_META_CONTEXT data: the export name and the queries."""
    q = b"".join(struct.pack(">I", len(x)) + x for x in queries)
    return struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries)) + q


def request(typ, off, length, cookie=1, flags=0):
    """A compact (32-bit length) transmission request header."""
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, typ, cookie, off, length)


def closed_within(sock, seconds):
    """Whether the server closes sock within seconds (a bounded wait);
    whatever it sends meanwhile is read and dropped."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        r, _, _ = select.select([sock], [], [], 0.1)
        if r:
            try:
                if not sock.recv(65536):
                    return True
            except ConnectionResetError:
                return True
    return False
