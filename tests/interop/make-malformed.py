#!/usr/bin/python3
"""Builds a corpus of malformed VHD images from good ones, for
test-malformed-images.sh.

  make-malformed.py corpus GOOD_DYNAMIC GOOD_FIXED OUTDIR
      writes OUTDIR/<case>.vhd and prints a manifest, one line per case:
      <case>.vhd <TAB> fail|warn <TAB> regex[;regex...]
      "fail": vhdimg info and check must exit non-zero; "warn": the image
      must still open (info exits 0) with a warning.  Every regex must match
      (case-insensitively) the output: it names the field at fault.
  make-malformed.py set-uuid IMAGE
      gives IMAGE a new unique id (both footer copies, valid checksums), so a
      child that names it as parent no longer matches.

GOOD_DYNAMIC must have at least two allocated blocks.
"""
import os
import struct
import sys
import uuid

FOOTER = 512
HEADER = 1024
UNUSED = 0xFFFFFFFF


def checksum(buf, off):
    """Ones' complement of the byte sum, the checksum field counted as zero."""
    s = sum(buf) - sum(buf[off:off + 4])
    return (~s) & 0xFFFFFFFF


def seal_footer(f):
    f[64:68] = struct.pack(">I", checksum(f, 64))


def seal_header(h):
    h[36:40] = struct.pack(">I", checksum(h, 36))


class Image:
    def __init__(self, path):
        with open(path, "rb") as fh:
            self.data = bytearray(fh.read())
        self.footer = self.data[-FOOTER:]
        self.dynamic = struct.unpack(">I", self.footer[60:64])[0] != 2
        if self.dynamic:
            self.hoff = struct.unpack(">Q", self.footer[16:24])[0]
            h = self.header
            self.bat_off = struct.unpack(">Q", h[16:24])[0]
            self.entries = struct.unpack(">I", h[28:32])[0]
            self.block_size = struct.unpack(">I", h[32:36])[0]

    @property
    def header(self):
        return self.data[self.hoff:self.hoff + HEADER]

    def bat(self, i):
        o = self.bat_off + 4 * i
        return struct.unpack(">I", self.data[o:o + 4])[0]

    def set_bat(self, i, sector):
        o = self.bat_off + 4 * i
        self.data[o:o + 4] = struct.pack(">I", sector)

    def edit_footers(self, off, raw, seal=True, copies=("end", "start")):
        """Changes bytes of the trailing footer and (dynamic) the copy at 0."""
        places = []
        if "end" in copies:
            places.append(len(self.data) - FOOTER)
        if "start" in copies and self.dynamic:
            places.append(0)
        for p in places:
            f = self.data[p:p + FOOTER]
            f[off:off + len(raw)] = raw
            if seal:
                seal_footer(f)
            self.data[p:p + FOOTER] = f

    def edit_header(self, off, raw, seal=True):
        h = self.header
        h[off:off + len(raw)] = raw
        if seal:
            seal_header(h)
        self.data[self.hoff:self.hoff + HEADER] = h

    def write(self, path, data=None):
        with open(path, "wb") as fh:
            fh.write(self.data if data is None else data)


def corpus(good_dyn, good_fixed, outdir):
    os.makedirs(outdir, exist_ok=True)
    cases = []

    def emit(name, img, expect, patterns, data=None):
        img.write(os.path.join(outdir, name + ".vhd"), data)
        cases.append((name + ".vhd", expect, patterns))

    def dyn():
        return Image(good_dyn)

    base = dyn()
    size = len(base.data)
    allocated = [i for i in range(base.entries) if base.bat(i) != UNUSED]
    if len(allocated) < 2:
        sys.exit(f"{good_dyn}: needs at least two allocated blocks")
    last_block_end = max(base.bat(i) for i in allocated) * 512 + 512 + base.block_size

    # Truncated files: nothing, less than a footer, the footer copy and part of
    # the header, part of the BAT, the last block cut short with its footer.
    for n, patterns in ((0, "footer"), (1, "footer"), (511, "footer"),
                        (base.hoff + 100, "footer"),
                        (base.bat_off + 10, "header|BAT|table"),
                        (last_block_end - 4096, "BAT entry|block;past|beyond|end")):
        emit(f"truncated-{n}", base, "fail", patterns, base.data[:n])

    # Trailing footer damaged, copy at 0 intact: recoverable.
    img = dyn()
    img.edit_footers(64, b"\x12\x34\x56\x78", seal=False, copies=("end",))
    emit("footer-trailing-checksum", img, "warn", "footer")
    # Both footers damaged.
    img = dyn()
    img.edit_footers(64, b"\x12\x34\x56\x78", seal=False)
    emit("footer-both-checksum", img, "fail", "footer;checksum")
    img = dyn()
    img.edit_footers(0, b"notavhd!")
    emit("footer-bad-cookie", img, "fail", "footer;cookie|conectix")
    img = dyn()
    img.edit_footers(60, struct.pack(">I", 5))
    emit("disk-type-5", img, "fail", "disk type")
    img = dyn()
    img.edit_footers(16, struct.pack(">Q", size + 4096))
    emit("header-offset-beyond-eof", img, "fail", "data offset|header offset")

    # Dynamic header.
    img = dyn()
    img.edit_header(36, b"\x12\x34\x56\x78", seal=False)
    emit("header-checksum", img, "fail", "header;checksum")
    img = dyn()
    img.edit_header(0, b"notsprse")
    emit("header-bad-cookie", img, "fail", "header;cookie|cxsparse")
    img = dyn()
    img.edit_header(16, struct.pack(">Q", size + 1024 * 1024))
    emit("bat-offset-beyond-eof", img, "fail", "BAT|table offset")
    img = dyn()
    img.edit_header(28, struct.pack(">I", 0xFFFFFFFF))
    emit("max-table-entries-huge", img, "fail", "max.table.entries")
    img = dyn()
    img.edit_header(28, struct.pack(">I", 1))
    emit("max-table-entries-too-few", img, "fail", "max.table.entries")
    for name, bs in (("block-size-not-pow2", 3 * 1024 * 1024), ("block-size-zero", 0),
                     ("block-size-1g", 1 << 30)):
        img = dyn()
        img.edit_header(32, struct.pack(">I", bs))
        emit(name, img, "fail", "block size")

    # BAT entries.
    img = dyn()
    img.set_bat(allocated[1], img.bat(allocated[0]))
    emit("bat-overlap", img, "fail", "BAT entry;overlap")
    img = dyn()
    img.set_bat(allocated[0], img.hoff // 512)
    emit("bat-into-header", img, "fail", "BAT entry;header")
    img = dyn()
    img.set_bat(allocated[0], size // 512 + 100)
    emit("block-beyond-eof", img, "fail", "BAT entry;past|beyond|end")

    # A Xen batmap header after the BAT that points outside the file, and
    # one whose map lies across a block: ignored, with a warning (tapdisk
    # could not use them either).
    bat_end = base.bat_off + (base.entries * 4 + 511) // 512 * 512
    for name, map_off in (("batmap-outside-file", size + 4096),
                          ("batmap-across-block", base.bat(allocated[0]) * 512)):
        img = dyn()
        hdr = bytearray(512)
        hdr[0:8] = b"tdbatmap"
        struct.pack_into(">QIII", hdr, 8, map_off, 1, 0x00010002, 0xFFFFFFFF)
        if base.bat(allocated[0]) * 512 < bat_end + 512:
            sys.exit(f"{good_dyn}: no sector free after the BAT for a batmap header")
        img.data[bat_end:bat_end + 512] = hdr
        emit(name, img, "warn", "batmap;ignored")

    # Fixed disk whose data is shorter than its footer says.
    fixed = Image(good_fixed)
    emit("fixed-wrong-size", fixed, "fail", "file size|current size",
         fixed.data[:-FOOTER - 1024 * 1024] + fixed.footer)
    fixed = Image(good_fixed)
    fixed.edit_footers(48, struct.pack(">Q", 0))
    emit("fixed-size-zero", fixed, "fail", "current size")

    for name, expect, patterns in cases:
        print(f"{name}\t{expect}\t{patterns}")


def set_uuid(path):
    img = Image(path)
    img.edit_footers(68, uuid.uuid4().bytes)
    img.write(path)


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "corpus":
        corpus(*sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "set-uuid":
        set_uuid(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
