#!/usr/bin/python3
"""Writes the seed corpus of fuzz-nbd-server (layout: see fuzz-nbd-server.c):
a settings byte, four schedule bytes, then what a client sends."""
import os
import struct
import sys

IHAVEOPT = 0x49484156454F5054
REQ_MAGIC = 0x25609513
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META, OPT_EXTENDED = 8, 9, 10, 11
READ, WRITE, DISC, FLUSH, TRIM, CACHE, ZERO, BLOCK_STATUS = range(8)
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO = 1, 2, 4, 8, 16
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3
# settings byte
TLS_ON, TLS_REQUIRE, READ_ONLY, SMALL_INFLIGHT, SHUTDOWN = 2, 3, 4, 8, 16


# A TLS 1.3 ClientHello for the harness's PSK identity "fuzz" (gnutls-cli).
CLIENT_HELLO = bytes.fromhex(
    "16030301c1010001bd0303b94627f2b069308cadda4b0a914251ab1221890f0261fb5f094895217a04995920"
    "499fb1644415f698768f50b21418303c66b62cde373a965a5dfd7d4f0ad50aa5005c1302130313011304c02c"
    "cca9c0adc00ac02bc0acc009c030cca8c014c02fc013009dc09d0035009cc09c002f009fccaac09f0039009e"
    "c09e003300a9ccabc0a5008d00a8c0a4008cccacc036c03500abccadc0a7009100aac0a60090010001180005"
    "00050100000000000a00160014001700180019001d001e01000101010201030104000b00020100000d002200"
    "20040108090804040308070501080a0805050308080601080b08060603020102030016000000170000002300"
    "000033006b00690017004104c6ff49a228f5ba849bd6458b4fe0920b28e3af6383da0d0f59b2d7abc5c56564"
    "c79ba0ef6ef7289cfdca19c295409c037f918f78fde7dbab3c687560718522cf001d0020905deda076a4bd93"
    "85701f3a77a68231c4fe58cb85d2b8e446b56afd36923518002b00050403040303ff01000100002d00030200"
    "01001c000240010029002f000a000466757a7a00000000002120d48802ab4d37bdcf70906d86bb043a414aee"
    "4e81529f69e229929d59b3b6526f")


def head(settings=0, schedule=0):
    return bytes([settings]) + struct.pack(">I", schedule)


def flags(f=3):
    return struct.pack(">I", f)


def option(opt, payload=b"", length=None):
    n = len(payload) if length is None else length
    return struct.pack(">QII", IHAVEOPT, opt, n) + payload


def go(name=b"", infos=(), opt=OPT_GO):
    return option(opt, struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) +
                  b"".join(struct.pack(">H", i) for i in infos))


def meta(opt, name, queries):
    return option(opt, struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries)) +
                  b"".join(struct.pack(">I", len(q)) + q for q in queries))


cookie = 0


def req(typ, offset=0, length=0, fl=0, payload=None, magic=REQ_MAGIC):
    global cookie
    cookie += 1
    r = struct.pack(">IHHQQI", magic, fl, typ, cookie, offset, length)
    if typ == WRITE and payload is None:
        payload = bytes((cookie + i * 7) & 255 for i in range(length))
    return r + (payload or b"")


def commands():
    """One of each command, over data, holes and the disk's end."""
    return (req(WRITE, 8192, 4096) + req(READ, 8192, 4096) + req(WRITE, 1000, 100, FUA) +
            req(READ, 0, 16384) + req(FLUSH) + req(TRIM, 4096, 4096) +
            req(ZERO, 12288, 8192) + req(ZERO, 512, 512, NO_HOLE) +
            req(ZERO, 20480, 4096, FAST_ZERO) + req(CACHE, 0, 4096) + req(READ, 0, 0) +
            req(WRITE, 0, 0) + req(READ, 65536 - 512, 512) + req(DISC))


def structured_commands():
    return (req(READ, 0, 65536) + req(READ, 8192, 8192, DF) + req(BLOCK_STATUS, 0, 65536) +
            req(BLOCK_STATUS, 4096, 8192, REQ_ONE) + req(WRITE, 4096, 512) +
            req(BLOCK_STATUS, 0, 16384) + req(READ, 0, 16384) + req(DISC))


SEEDS = {
    "go-commands": head() + flags() + go() + commands(),
    "go-commands-split": head(0, 0x01020304) + flags() + go() + commands(),
    "go-structured": head(0, 7) + flags() + option(OPT_STRUCTURED) +
    meta(OPT_SET_META, b"", [b"base:allocation"]) + go(b"", [INFO_BLOCK_SIZE]) +
    structured_commands(),
    "go-structured-diff": head(0, 99) + flags() + option(OPT_STRUCTURED) +
    meta(OPT_SET_META, b"diff", [b"base:allocation"]) + go(b"diff") + structured_commands(),
    "export-name": head() + flags(1) + option(OPT_EXPORT_NAME, b"diff") + commands(),
    "export-name-no-zeroes": head(0, 5) + flags(3) + option(OPT_EXPORT_NAME, b"") + commands(),
    "export-name-unknown": head() + flags() + option(OPT_EXPORT_NAME, b"nope") + req(READ, 0, 512),
    "list-info-abort": head() + flags() + option(OPT_LIST) +
    go(b"fixed", [INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE, INFO_EXPORT, 77], OPT_INFO) +
    go(b"missing", [], OPT_INFO) + option(OPT_LIST, b"x") + option(OPT_ABORT),
    "meta-contexts": head() + flags() + meta(OPT_LIST_META, b"", [b"base:"]) +
    option(OPT_STRUCTURED) + option(OPT_STRUCTURED) + meta(OPT_LIST_META, b"", []) +
    meta(OPT_LIST_META, b"", [b"base:"]) + meta(OPT_SET_META, b"", [b"qemu:dirty"]) +
    meta(OPT_SET_META, b"nope", [b"base:allocation"]) +
    meta(OPT_SET_META, b"fixed", [b"base:allocation"]) + go(b"fixed") +
    req(BLOCK_STATUS, 0, 65536) + req(WRITE, 0, 512) + req(DISC),
    "options-unsupported": head() + flags() + option(OPT_EXTENDED) + option(4) +
    option(99, b"abc") + option(OPT_STRUCTURED, b"x") + go(b"\xff\xfe") +
    option(OPT_GO, b"\x00\x00\x00\x09ab") + option(OPT_LIST, b"", 70000) + bytes(200) +
    option(OPT_ABORT),
    "option-too-large": head() + flags() + option(OPT_LIST, b"", 2 << 20),
    "not-fixed-newstyle": head() + flags(0) + option(OPT_LIST),
    "bad-client-flags": head() + flags(0x80) + go(),
    "bad-option-magic": head() + flags() + b"IHAVEOPX" + struct.pack(">II", OPT_GO, 0),
    "tls-refused": head() + flags() + option(OPT_STARTTLS) + go() + req(READ, 0, 512) +
    req(DISC),
    "tls-required": head(TLS_REQUIRE, 14) + flags() + go() + option(OPT_LIST) +
    option(OPT_STARTTLS, b"x") + option(OPT_STARTTLS) +
    bytes.fromhex("16030100") + b"\x2f" + bytes(47),
    "tls-required-export-name": head(TLS_REQUIRE) + flags() + option(OPT_EXPORT_NAME, b""),
    "tls-on": head(TLS_ON, 14) + flags() + option(OPT_STRUCTURED) + option(OPT_STARTTLS) +
    bytes.fromhex("160301002e010000") + bytes(46),
    "tls-on-client-hello": head(TLS_ON, 29) + flags() + option(OPT_STARTTLS) + CLIENT_HELLO,
    "tls-required-client-hello": head(TLS_REQUIRE, 21) + flags() + option(OPT_LIST) +
    option(OPT_STARTTLS) + CLIENT_HELLO,
    "read-only": head(READ_ONLY) + flags() + go(b"") + commands(),
    "read-only-fixed": head(0, 3) + flags() + go(b"fixed") + commands(),
    "back-pressure": head(SMALL_INFLIGHT, 11) + flags() + go() +
    b"".join(req(WRITE, i * 4096, 4096) + req(READ, 0, 8192) for i in range(4)) +
    req(FLUSH) + req(DISC),
    "shutdown-mid-requests": head(SHUTDOWN, 13) + flags() + go() +
    b"".join(req(READ, i * 4096, 8192) for i in range(6)) + req(WRITE, 0, 4096),
    "shutdown-in-handshake": head(SHUTDOWN) + flags() + option(OPT_LIST),
    "request-errors": head() + flags() + go() + req(READ, 262144 - 512, 1024) +
    req(WRITE, 262144, 512) + req(WRITE, 0, 512, 0x80) + req(12, 0, 512) +
    req(BLOCK_STATUS, 0, 512) + req(READ, 0, 512, DF) + req(TRIM, 1, 1) +
    req(ZERO, 0, 512, NO_HOLE | FAST_ZERO) + req(READ, 0, 33 << 20) + req(READ, 0, 512),
    "bad-request-magic": head() + flags() + go() + req(READ, 0, 512, magic=0x12345678),
    "write-too-large": head() + flags() + go() + req(WRITE, 0, 65 << 20, payload=b""),
    "eof-mid-payload": head() + flags() + go() + req(WRITE, 0, 4096, payload=bytes(100)),
    "eof-mid-header": head() + flags() + go() + req(READ, 0, 512)[:13],
    "pipelined-overlap": head(0, 0xdeadbeef) + flags() + option(OPT_STRUCTURED) + go(b"diff") +
    b"".join(req(WRITE, 4096 + i * 256, 1024) + req(READ, 4096, 4096) +
             req(ZERO, 4096 + i * 512, 512) + req(BLOCK_STATUS, 0, 65536)
             for i in range(8)) + req(FLUSH, fl=FUA) + req(DISC),
}


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make-server-seeds.py DIR")
    d = sys.argv[1]
    os.makedirs(d, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
