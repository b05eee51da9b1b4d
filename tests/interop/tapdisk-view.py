#!/usr/bin/python3
"""A VHD as Xen's tapdisk sees it, batmap and all (blktap's libvhd and
block-vhd.c, read for their rules, not their code):

  - the batmap header sits at the BAT's offset plus the BAT rounded up to a
    sector: cookie "tdbatmap", map offset u64, map size in sectors u32,
    version u32, checksum u32 (big-endian);
  - its checksum is the ones' complement of the sum of the map's first
    max(1, ceil((current size >> 24) / 512)) sectors, the bytes taken as
    signed chars in version 1.1 and unsigned from 1.2;
  - block b's bit is 0x80 >> (b % 8) of byte b / 8; when it is set, tapdisk
    reads every sector of an allocated block from this image and never
    looks at its sector bitmap.

  tapdisk-view.py invariant IMAGE
      exit 1 naming each problem unless: the checksum holds, and every
      block the batmap marks full is allocated with every bitmap bit set
  tapdisk-view.py read OUT IMAGE [PARENT...]
      the virtual disk as tapdisk reads it, into OUT
  tapdisk-view.py dump IMAGE
      the batmap's header and map, in hex (to compare before and after)
  tapdisk-view.py setbit IMAGE BLOCK [--keep-checksum]
      marks BLOCK full and (unless told not to) fixes the checksum
"""
import struct
import sys

SECTOR = 512
UNUSED = 0xFFFFFFFF


class Vhd:
    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.data = bytearray(f.read())
        foot = self.data[-SECTOR:]
        if foot[0:8] != b"conectix":
            sys.exit(f"{path}: no footer")
        self.hdr_off, = struct.unpack_from(">Q", foot, 16)
        self.current_size, = struct.unpack_from(">Q", foot, 48)
        self.disk_type, = struct.unpack_from(">I", foot, 60)
        h = self.hdr_off
        self.table_off, = struct.unpack_from(">Q", self.data, h + 16)
        self.entries, self.bs = struct.unpack_from(">II", self.data, h + 28)
        self.bat = struct.unpack_from(">%dI" % self.entries, self.data, self.table_off)
        self.bm_bytes = (self.bs // SECTOR + 7) // 8
        self.bm_size = (self.bm_bytes + SECTOR - 1) // SECTOR * SECTOR
        bat_span = (self.entries * 4 + SECTOR - 1) // SECTOR * SECTOR
        self.batmap_hdr = self.table_off + bat_span
        b = self.data[self.batmap_hdr:self.batmap_hdr + SECTOR]
        self.batmap = None
        if b[0:8] == b"tdbatmap":
            self.map_off, self.map_secs, self.version, self.checksum = \
                struct.unpack_from(">QIII", b, 8)
            self.batmap = self.data[self.map_off:self.map_off + self.map_secs * SECTOR]

    def computed_checksum(self):
        covered = max(((self.current_size >> 24) + SECTOR - 1) // SECTOR, 1) * SECTOR
        total = 0
        for byte in self.batmap[:covered]:
            total += byte - 256 if self.version == 0x00010001 and byte > 127 else byte
        return ~total & 0xFFFFFFFF

    def marked(self, blk):
        return (self.batmap is not None and blk // 8 < len(self.batmap)
                and self.batmap[blk // 8] & (0x80 >> blk % 8) != 0)

    def bit(self, blk, sec):
        off = self.bat[blk] * SECTOR
        return self.data[off + sec // 8] & (0x80 >> sec % 8) != 0

    def sector(self, s):
        """This image's bytes for virtual sector s, or None: look below."""
        per = self.bs // SECTOR
        blk, sec = divmod(s, per)
        if blk >= self.entries or self.bat[blk] == UNUSED:
            return None
        if not self.marked(blk) and not self.bit(blk, sec):
            return None
        off = self.bat[blk] * SECTOR + self.bm_size + sec * SECTOR
        return bytes(self.data[off:off + SECTOR])


def invariant(path):
    v = Vhd(path)
    if v.batmap is None:
        sys.exit(f"{path}: no batmap after the BAT at offset {v.batmap_hdr}")
    bad = []
    if v.computed_checksum() != v.checksum:
        bad.append(f"checksum 0x{v.checksum:08x}, the map sums to 0x{v.computed_checksum():08x}")
    per = v.bs // SECTOR
    for blk in range(v.entries):
        if not v.marked(blk):
            continue
        if v.bat[blk] == UNUSED:
            bad.append(f"block {blk} is marked full but unallocated")
        elif not all(v.bit(blk, s) for s in range(per)):
            bad.append(f"block {blk} is marked full but its bitmap is not")
    for b in bad:
        print(f"{path}: {b}", file=sys.stderr)
    sys.exit(1 if bad else 0)


def read(out, paths):
    chain = [Vhd(p) for p in paths]
    size = chain[0].current_size
    with open(out, "wb") as f:
        for s in range(size // SECTOR):
            data = None
            for v in chain:
                if s * SECTOR >= v.current_size:
                    break
                data = v.sector(s)
                if data is not None or v.disk_type != 4:
                    break
            f.write(data if data is not None else bytes(SECTOR))


def dump(path):
    v = Vhd(path)
    if v.batmap is None:
        sys.exit(f"{path}: no batmap")
    print(bytes(v.data[v.batmap_hdr:v.batmap_hdr + SECTOR]).hex())
    print(bytes(v.batmap).hex())


def setbit(path, blk, keep):
    v = Vhd(path)
    v.batmap[blk // 8] |= 0x80 >> blk % 8
    v.data[v.map_off:v.map_off + len(v.batmap)] = v.batmap
    if not keep:
        struct.pack_into(">I", v.data, v.batmap_hdr + 24, v.computed_checksum())
    with open(path, "wb") as f:
        f.write(v.data)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "invariant":
        invariant(args[0])
    elif cmd == "read":
        read(args[0], args[1:])
    elif cmd == "dump":
        dump(args[0])
    elif cmd == "setbit":
        setbit(args[0], int(args[1]), "--keep-checksum" in args)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
