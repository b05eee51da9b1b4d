#!/usr/bin/python3
"""Writes the seed corpus of fuzz-nbd-codec (layout: see fuzz-nbd-codec.c)."""
import os
import struct
import sys

IHAVEOPT = 0x49484156454F5054
REQ_MAGIC = 0x25609513
EXT_REQ_MAGIC = 0x21E41C71
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META = 8, 9, 10
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_ZERO, CMD_BS = range(8)
OPT_EXTENDED = 11
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO, PAYLOAD_LEN = 1, 2, 4, 8, 16, 32
# transmission flags: HAS_FLAGS|SEND_FLUSH|SEND_FUA|SEND_TRIM|WRITE_ZEROES|DF|FAST_ZERO
TFLAGS = 0x1 | 0x4 | 0x8 | 0x20 | 0x40 | 0x80 | 0x800


def prologue(hs=3, cflags=3):
    return bytes([hs]) + struct.pack(">I", cflags)


def option(opt, payload, length=None):
    n = len(payload) if length is None else length
    return b"\x00" + struct.pack(">QII", IHAVEOPT, opt, n) + payload


def name_and_infos(name, infos):
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) + b"".join(
        struct.pack(">H", i) for i in infos)


def meta(name, queries):
    return struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries)) + b"".join(
        struct.pack(">I", len(q)) + q for q in queries)


def request(typ, offset=0, length=0, flags=0, cookie=1, tflags=TFLAGS, bools=3,
            size=1 << 20, max_payload=32 << 20, payload=b"", magic=REQ_MAGIC):
    return (b"\x01" + struct.pack(">HBQI", tflags, bools, size, max_payload) +
            struct.pack(">IHHQQI", magic, flags, typ, cookie, offset, length) + payload)


def ext_request(typ, offset=0, length=0, flags=0, cookie=1, tflags=TFLAGS, bools=7,
                size=2040 << 30, max_payload=32 << 20, payload=b"", magic=EXT_REQ_MAGIC):
    """A 32-byte request (the limits byte's bit 2 says extended headers)."""
    return (b"\x01" + struct.pack(">HBQI", tflags, bools, size, max_payload) +
            struct.pack(">IHHQQQ", magic, flags, typ, cookie, offset, length) + payload)


SEEDS = {
    "go-default": prologue() + option(OPT_GO, name_and_infos(b"", [])),
    "go-infos": prologue() + option(OPT_GO, name_and_infos(b"disk", [1, 2, 3, 0, 99])),
    "info-name": prologue() + option(OPT_INFO, name_and_infos(b"export", [1])),
    "export-name": prologue(1, 1) + option(OPT_EXPORT_NAME, b"disk"),
    "list-abort": prologue() + option(OPT_LIST, b"") + option(OPT_ABORT, b""),
    "meta-list": prologue() + option(OPT_STRUCTURED, b"") +
    option(OPT_LIST_META, meta(b"", [b"base:"])),
    "meta-set": prologue() + option(OPT_SET_META, meta(b"disk", [b"base:allocation",
                                                               b"qemu:dirty-bitmap:x"])),
    "meta-bad-count": prologue() + option(OPT_SET_META, b"\0\0\0\0\0\0\0\x05\0\0\0\x01a"),
    "option-long-claim": prologue() + option(OPT_GO, b"\0\0", length=0xFFFFFFFF),
    "bad-client-flags": prologue(1, 0xFFFFFFFF) + option(OPT_GO, name_and_infos(b"", [])),
    "transmission": prologue() + request(CMD_READ, 4096, 4096) +
    request(CMD_WRITE, 0, 8, FUA, payload=b"12345678") + request(CMD_FLUSH) +
    request(CMD_TRIM, 512, 512) + request(CMD_ZERO, 0, 65536, NO_HOLE | FAST_ZERO) +
    request(CMD_BS, 0, 1 << 20, REQ_ONE) + request(CMD_CACHE, 0, 512) +
    request(CMD_READ, 0, 512, DF) + request(CMD_DISC),
    "transmission-edges": prologue() + request(CMD_READ, (1 << 20) - 512, 1024) +
    request(CMD_WRITE, 0, 0xFFFFFFFF, payload=b"xx") +
    request(CMD_READ, 0xFFFFFFFFFFFFFE00, 0x400) + request(CMD_ZERO, 0, 1, tflags=0x3) +
    request(CMD_BS, 0, 512, bools=0) + request(9, 0, 0) + request(CMD_FLUSH, 1, 1) +
    request(CMD_READ, 0, 512, magic=EXT_REQ_MAGIC),
    "extended": prologue() + option(OPT_EXTENDED, b"") + option(OPT_STRUCTURED, b"") +
    ext_request(CMD_WRITE, 4096, 8, PAYLOAD_LEN | FUA, payload=b"12345678") +
    ext_request(CMD_READ, 0, 4096, DF) + ext_request(CMD_ZERO, 0, 2040 << 30) +
    ext_request(CMD_TRIM, 0, 2040 << 30) + ext_request(CMD_BS, 0, 2040 << 30, REQ_ONE) +
    ext_request(CMD_FLUSH) + ext_request(CMD_CACHE, 0, 1 << 40) + ext_request(CMD_DISC),
    "extended-edges": prologue() + ext_request(CMD_WRITE, 0, 8, payload=b"12345678") +
    ext_request(CMD_BS, 0, 12, PAYLOAD_LEN, payload=b"\0" * 8 + b"\0\0\0\1") +
    ext_request(CMD_READ, 0, 1 << 32) + ext_request(CMD_ZERO, 1, 2040 << 30) +
    ext_request(CMD_READ, 0, 8, PAYLOAD_LEN, payload=b"abcdefgh") +
    ext_request(CMD_FLUSH, magic=REQ_MAGIC),
}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
